import Foundation
import GGUF
import LoRA
import TestSupport
import XCTest

/// `mpirun -np 2 lorakit train` on a tiny model: the same adapter as one process accumulating the same batches, and
/// a rank that dies ends the job quickly with the last checkpoint intact.
final class DistributedTests: XCTestCase {
    var dir = ""

    func mpirun() throws -> String {
        for path in ["/usr/bin/mpirun", "/usr/local/bin/mpirun"] where FileManager.default.isExecutableFile(atPath: path) { return path }
        if ProcessInfo.processInfo.environment["CI"] == "true" { XCTFail("mpirun is missing (scripts/install-deps.sh installs openmpi-bin)") }
        throw XCTSkip("mpirun is missing (apt-get install openmpi-bin)")
    }

    override func setUpWithError() throws {
        dir = temporaryDirectory("lorakit-mpi")
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        try tiny.write(to: dir + "/m.gguf")
        try String(repeating: "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG. PACK MY BOX WITH FIVE DOZEN JUGS. ", count: 40)
            .write(toFile: dir + "/d.txt", atomically: true, encoding: .utf8)
    }

    func train(_ out: String, _ extra: [String]) -> [String] {
        ["train", "-m", dir + "/m.gguf", "--train-data", dir + "/d.txt", "--ctx", "16", "--batch", "2", "-t", "1", "--seed", "4",
         "--save-every", "0", "--lora-out", dir + "/" + out] + extra
    }

    func run(_ executable: String, _ args: [String]) throws -> (Int32, String) {
        let (status, out, err) = try LoRAKitBinary.run(args, executable: executable)
        return (status, out + err)
    }

    func steps(_ text: String) -> [String] {
        text.split(separator: "\n").filter { $0.hasPrefix("step ") }.map { $0.components(separatedBy: "  lr")[0] }
    }

    func testTwoRanksEqualOneProcessAccumulatingTwoBatches() throws {
        let mpi = try mpirun()
        let (s1, one) = try run(LoRAKitBinary.path, train("one.gguf", ["--iters", "8", "--grad-acc", "2", "--val-data", dir + "/d.txt"]))
        XCTAssertEqual(s1, 0, one)
        let mpiArgs = ["--allow-run-as-root", "--oversubscribe", "-np", "2", LoRAKitBinary.path]
        let (s2, two) = try run(mpi, mpiArgs + train("two.gguf", ["--iters", "8", "--val-data", dir + "/d.txt"]))
        XCTAssertEqual(s2, 0, two)
        XCTAssertTrue(two.contains("data parallel: 2 MPI ranks, 4 rows per step"), two)
        XCTAssertEqual(steps(two).count, 8, two)
        XCTAssertEqual(steps(one), steps(two), "the same loss at every step")
        XCTAssertEqual(two.components(separatedBy: "validation at step 8").count, 2, "only rank 0 prints: \(two)")
        let a = try Data(contentsOf: URL(fileURLWithPath: dir + "/one.gguf")), b = try Data(contentsOf: URL(fileURLWithPath: dir + "/two.gguf"))
        XCTAssertEqual(a, b, "bit-identical adapters")
        let (s3, again) = try run(mpi, mpiArgs + train("again.gguf", ["--iters", "8", "--val-data", dir + "/d.txt"]))
        XCTAssertEqual(s3, 0, again)
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/again.gguf")), b, "a repeated run is bit-identical")
        // A checkpoint of two ranks resumes in one process: the same batches in the same order, now one per step.
        let (s4, resumed) = try run(LoRAKitBinary.path, train("two.gguf", ["--iters", "10", "--checkpoint-in", dir + "/two.checkpoint.gguf"]))
        XCTAssertEqual(s4, 0, resumed)
        XCTAssertEqual(steps(resumed).count, 2, resumed)
    }

    func testAKilledRankEndsTheJob() throws {
        let mpi = try mpirun()
        let p = Process()
        p.executableURL = URL(fileURLWithPath: mpi)
        p.arguments = ["--allow-run-as-root", "--oversubscribe", "-np", "2", LoRAKitBinary.path]
            + train("k.gguf", ["--iters", "1000000", "--save-every", "3"])
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        while !text.contains("saved checkpoint"), Date() < deadline {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        // Kill rank 1 (the processes are mpirun's children; rank 0 prints, so take the other).
        let children = try String(contentsOfFile: "/proc/\(p.processIdentifier)/task/\(p.processIdentifier)/children", encoding: .utf8)
            .split(separator: " ").compactMap { Int32($0) }
        XCTAssertEqual(children.count, 2, text)
        kill(children.last!, SIGKILL)
        let killed = Date()
        text += String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertLessThan(Date().timeIntervalSince(killed), 30)
        XCTAssertNotEqual(p.terminationStatus, 0)
        XCTAssertTrue(text.contains("exited on signal 9"), text)
        XCTAssertNoThrow(try GGUFFile(path: dir + "/k.checkpoint.gguf"))
        XCTAssertNoThrow(try AdapterLoader.load(dir + "/k.gguf"))
    }
}
