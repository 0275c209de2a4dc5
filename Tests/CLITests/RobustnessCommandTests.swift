import Foundation
import GGUF
import LoRA
import TestSupport
import XCTest

/// Bad input of every kind gets one clear line and a non-zero exit, never a trap, and no output overwrites an input.
/// Exit codes: 0 success, 1 error (one `error:` line), 64 usage, 130 after Ctrl-C.
final class RobustnessCommandTests: XCTestCase {
    var dir = ""
    var model = ""
    var data = ""

    override func setUpWithError() throws {
        (dir, model, data) = try tinyModelAndText("lorakit-robust", repeats: 20)
    }

    /// Runs lorakit and checks the exit code; an error is exactly one `error:` line.
    @discardableResult
    func expect(_ status: Int32, _ args: [String], contains text: String? = nil, stdin: String? = nil,
                file: StaticString = #filePath, line: UInt = #line) throws -> (String, String) {
        let (code, out, err) = try LoRAKitBinary.run(args, stdin: stdin)
        XCTAssertEqual(code, status, "\(args): \(err)", file: file, line: line)
        if status == 1 {
            XCTAssertTrue(err.hasPrefix("error: "), err, file: file, line: line)
            XCTAssertEqual(err.split(separator: "\n").count, 1, err, file: file, line: line)
        }
        if let text { XCTAssertTrue((out + err).contains(text), "\(args): expected '\(text)' in \(out + err)", file: file, line: line) }
        return (out, err)
    }

    func train(_ extra: [String]) -> [String] {
        ["train", "-m", model, "--train-data", data, "--ctx", "16", "--batch", "1", "--iters", "1", "-t", "1"] + extra
    }

    func generate(_ extra: [String]) -> [String] { ["generate", "-m", model, "-p", "HI"] + extra }

    func testHugeOrNonFiniteOptionsAreUsageErrors() throws {
        try expect(64, train(["-c", "4611686018427387904", "--lora-out", dir + "/a.gguf"]), contains: "--ctx")
        try expect(64, train(["-b", "1099511627776", "--lora-out", dir + "/a.gguf"]), contains: "--batch")
        try expect(64, train(["--alpha", "nan", "--lora-out", dir + "/a.gguf"]), contains: "--lora-alpha must be a finite")
        try expect(64, train(["--adam-beta1", "1", "--lora-out", dir + "/a.gguf"]), contains: "--adam-beta1")
        try expect(64, generate(["--temp", "nan"]), contains: "--temp")
        try expect(64, generate(["--top-p", "nan"]), contains: "--top-p")
        try expect(64, ["perplexity", "-m", model, "-f", data, "--chunks", "0"], contains: "--chunks")
        try expect(64, generate(["--lora-scaled", dir + "/x.gguf", "nan"]), contains: "finite")
    }

    /// --lora-in decides rank, alpha and targets: giving them too is refused rather than ignored; a frozen --lora
    /// trains on top of another adapter.
    func testContinuedTrainingOptions() throws {
        try expect(0, train(["--lora-out", dir + "/a.gguf", "--rank", "4"]))
        try expect(64, train(["--lora-in", dir + "/a.gguf", "--lora-out", dir + "/b.gguf", "--rank", "16"]), contains: "drop --rank")
        try expect(64, train(["--lora-in", dir + "/a.gguf", "--lora-out", dir + "/b.gguf", "--targets", "q"]), contains: "drop --targets")
        try expect(0, train(["--lora-in", dir + "/a.gguf", "--lora-out", dir + "/b.gguf"]))
        try expect(0, train(["--lora", dir + "/a.gguf", "--lora-out", dir + "/c.gguf"]))
        try expect(1, train(["--lora-in", dir + "/a.gguf", "--lora-out", dir + "/a.gguf"]), contains: "is --lora-in")
        // info with -m: fits, what it holds, ‖ΔW‖ by layer; an adapter of another model is one error line.
        let (info, _) = try expect(0, ["info", dir + "/a.gguf", "-m", model])
        XCTAssertTrue(info.contains("fits         yes") && info.contains("rank 4") && info.contains("layer 1 "), info)
        var other = TinyLlama()
        other.embeddingLength = 64
        other.addTinyTokenizer()
        try other.write(to: dir + "/other.gguf")
        try expect(1, ["info", dir + "/a.gguf", "-m", dir + "/other.gguf"], contains: "does not fit")
    }

    func testNegativeValuesWithASpace() throws {
        try expect(0, generate(["-n", "-1", "-s", "-1", "--ctx", "24", "--temp", "0"]))
        try expect(0, generate(["-n", "4", "--repeat-last-n", "-1", "--repeat-penalty", "1.3"]))
        try expect(0, generate(["-n", "4", "--repeat-last-n=-1", "--repeat-penalty", "1.3"]))
        // A number after a numeric option is its value even when negative: a documented one is used, a wrong one
        // gets the option's own message instead of "missing value".
        try expect(0, train(["--epochs", "-1", "--lora-out", dir + "/e.gguf"]))
        try expect(64, train(["--save-every", "-1", "--lora-out", dir + "/e.gguf"]), contains: "--save-every must not be negative (0: only at the end)")
        try expect(64, train(["--lr", "-1", "--lora-out", dir + "/e.gguf"]), contains: "--adam-alpha must be a finite, non-negative number")
        try expect(64, train(["--lora-r", "0", "--lora-out", dir + "/e.gguf"]), contains: "--lora-r must be at least 1 (got 0)")
        try expect(64, train(["--rank-wq", "-2", "--lora-out", dir + "/e.gguf"]), contains: "LoRA ranks must be between 1 and 65536")
        // generate and perplexity name the one option at fault and the value they got.
        try expect(64, generate(["-n", "-5"]), contains: "-n must be at least 0, or -1 for no limit (got -5)")
        try expect(64, generate(["--ctx", "4"]), contains: "--ctx must be at least 8 (got 4)")
        try expect(64, generate(["--top-p", "2"]), contains: "--top-p must be between 0 and 1 (got 2.0)")
        try expect(64, generate(["--repeat-last-n", "-3"]), contains: "(got -3)")
        try expect(64, ["perplexity", "-m", model, "-f", data, "--chunks", "0"], contains: "--chunks must be at least 1 (got 0)")
        try expect(64, ["perplexity", "-m", model, "-f", data, "-t", "0"], contains: "--threads must be at least 1 (got 0)")
    }

    /// A file that is not an adapter, given as one, is named for what it is, with the formats that are expected.
    func testNotAnAdapter() throws {
        try expect(1, generate(["-n", "1", "--lora", data]), contains: "not an adapter (expected a llama.cpp adapter GGUF")
        try expect(1, generate(["-n", "1", "--lora", model]), contains: "a GGUF model, not an adapter")
        try expect(1, ["merge", "-m", model, "--lora", dir, "-o", dir + "/merged.gguf"], contains: "a directory without adapter_config.json")
        FileManager.default.createFile(atPath: dir + "/empty.gguf", contents: Data())
        try expect(1, generate(["-n", "1", "--lora", dir + "/empty.gguf"]), contains: "not an adapter")
    }

    /// `--lora-scaled FILE S` takes a negative S with a space: the same adapter at 1 and at −1 cancels to the base.
    func testNegativeAdapterScale() throws {
        try expect(0, train(["--lora-out", dir + "/a.gguf", "--iters", "6", "--lr", "0.02"]))
        func estimate(_ extra: [String]) throws -> Double {
            let (out, _) = try expect(0, ["perplexity", "-m", model, "-f", data, "-c", "16", "-t", "1"] + extra)
            let line = out.split(separator: "\n").first { $0.hasPrefix("Final estimate: PPL = ") }
            return try XCTUnwrap(line.flatMap { Double($0.dropFirst("Final estimate: PPL = ".count).split(separator: " ")[0]) }, out)
        }
        let adapter = dir + "/a.gguf"
        let base = try estimate([]), added = try estimate(["--lora-scaled", adapter, "1"])
        let cancelled = try estimate(["--lora-scaled", adapter, "1", "--lora-scaled", adapter, "-1"])
        let subtracted = try estimate(["--lora-scaled=" + adapter, "-1"])
        XCTAssertNotEqual(base, added)
        XCTAssertEqual(cancelled, base, accuracy: base * 1e-5)
        XCTAssertNotEqual(subtracted, base)
        XCTAssertNotEqual(subtracted, added)
        try expect(64, generate(["--lora-scaled", adapter]), contains: "--lora-scaled FILE S")
    }

    func testOutputsNeverOverwriteInputs() throws {
        let before = try Data(contentsOf: URL(fileURLWithPath: model))
        try expect(1, train(["--lora-out", model]), contains: "is the model")
        try expect(1, train(["--lora-out", dir + "/a.gguf", "--checkpoint-out", model]), contains: "is the model")
        try expect(1, train(["--lora-out", data]), contains: "is --train-data")
        try expect(1, train(["--lora-out", dir + "/x.gguf", "--checkpoint-out", dir + "/x.gguf"]), contains: "are the same file")
        try expect(1, train(["--lora-out", dir + "/x.gguf", "--metrics", dir + "/x.gguf"]), contains: "are the same file")
        // The same file under another name is still the same file.
        symlink(model, dir + "/link.gguf")
        try expect(1, train(["--lora-out", dir + "/link.gguf"]), contains: "is the model")
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: model)), before, "the model is untouched")
        XCTAssertFalse(FileManager.default.fileExists(atPath: dir + "/x.gguf"))

        let adapter = dir + "/a.gguf"
        try expect(0, train(["--lora-out", adapter, "--seed", "1"]))
        try expect(1, ["merge", "-m", model, "--lora", adapter, "-o", model], contains: "is the model")
        try expect(1, ["merge", "-m", model, "--lora", adapter, "-o", adapter], contains: "is the adapter")
        try expect(0, ["convert", adapter, dir + "/peft", "--to", "peft", "-m", model])
        try expect(1, ["convert", dir + "/peft", dir + "/peft/adapter_model.safetensors", "-m", model], contains: "is the input")
    }

    func testSpecialAndUnwritableOutputsAreRefusedBeforeTraining() throws {
        try expect(1, train(["--lora-out", "/dev/full"]), contains: "not a regular file")
        try expect(1, ["merge", "-m", model, "--lora", dir + "/none.gguf", "-o", "/dev/null"], contains: "not a regular file")
        var s = stat()
        XCTAssertEqual(stat("/dev/null", &s), 0)
        XCTAssertEqual(s.st_mode & S_IFMT, S_IFCHR, "/dev/null is still a device")
        let (_, err) = try expect(1, train(["--lora-out", dir + "/b.gguf", "--metrics", "/proc/x.jsonl"]), contains: "--metrics")
        XCTAssertFalse(err.contains("step"), "refused before any training")
        try expect(1, train(["--lora-out", dir + "/no-such-folder/b.gguf"]), contains: "does not exist")
    }

    func testStaleTemporaryFilesAreRemoved() throws {
        let stale = dir + "/a.gguf.tmp-999999999"
        try Data(count: 100).write(to: URL(fileURLWithPath: stale))
        try expect(0, train(["--lora-out", dir + "/a.gguf"]))
        XCTAssertFalse(FileManager.default.fileExists(atPath: stale), "a killed writer's temporary file is gone")
    }

    func testWrongFilesAndUnreadableInputsSayWhatTheyAre() throws {
        try expect(0, train(["--lora-out", dir + "/a.gguf"]))
        try expect(1, ["generate", "-m", dir + "/a.gguf", "-p", "HI"], contains: "is a LoRA adapter, not a model")
        try expect(1, ["generate", "-m", try TestData.shared("testdata/vocab/ggml-vocab-gpt-2.gguf"), "-p", "HI"],
                   contains: "no tensors (a vocabulary-only file?)")
        // A PEFT directory is an adapter like any other: the same output as its GGUF.
        try expect(0, ["convert", dir + "/a.gguf", dir + "/peft", "--to", "peft", "-m", model])
        let (viaGGUF, _) = try expect(0, generate(["-n", "6", "--temp", "0", "--lora", dir + "/a.gguf"]))
        let (viaPEFT, _) = try expect(0, generate(["-n", "6", "--temp", "0", "--lora", dir + "/peft"]))
        XCTAssertEqual(viaGGUF, viaPEFT)
        let (pplGGUF, _) = try expect(0, ["perplexity", "-m", model, "-f", data, "-c", "16", "--lora", dir + "/a.gguf"])
        let (pplPEFT, _) = try expect(0, ["perplexity", "-m", model, "-f", data, "-c", "16", "--lora", dir + "/peft"])
        XCTAssertEqual(pplGGUF.split(separator: "\n").last, pplPEFT.split(separator: "\n").last)
        try expect(0, ["merge", "-m", model, "--lora", dir + "/a.gguf", "-o", dir + "/m1.gguf"])
        try expect(0, ["merge", "-m", model, "--lora", dir + "/peft", "-o", dir + "/m2.gguf"])
        XCTAssertEqual(try Data(contentsOf: URL(fileURLWithPath: dir + "/m1.gguf")), try Data(contentsOf: URL(fileURLWithPath: dir + "/m2.gguf")))
        try expect(1, ["perplexity", "-m", model, "-f", dir + "/missing.txt"], contains: "No such file")
        let (out, _) = try expect(0, ["tokenize", "-m", model, "-f", "/dev/stdin"], stdin: "HELLO")
        XCTAssertFalse(out.isEmpty)
        let blank = dir + "/blank.jsonl"
        try " \n\t\n  \n".write(toFile: blank, atomically: true, encoding: .utf8)
        try expect(1, ["train", "-m", model, "--train-data", blank, "--lora-out", dir + "/c.gguf"], contains: "only blank lines")
        // An adapter of another model names the first tensor that does not fit.
        var other = TinyLlama()
        other.embeddingLength = 64
        other.addTinyTokenizer()
        try other.write(to: dir + "/other.gguf")
        try expect(1, ["perplexity", "-m", dir + "/other.gguf", "-f", data, "-c", "16", "--lora", dir + "/a.gguf"], contains: "LoRA tensor 'blk.0.attn_")
    }

    func testHostileMetadataIsAnError() throws {
        for (key, value, expected) in [("llama.rope.freq_base", MetadataValue.float32(.nan), "llama.rope.freq_base"),
                                       ("llama.rope.freq_base", .float32(0), "llama.rope.freq_base"),
                                       ("llama.attention.layer_norm_rms_epsilon", .float32(-1), "layer_norm_rms_epsilon"),
                                       ("llama.rope.dimension_count", .uint32(10), "rope.dimension_count"),  // more than the head's 8
                                       ("llama.block_count", .uint32(1), "llama.block_count"),
                                       ("tokenizer.ggml.merges", .array(.string, [.string("AB")]), "tokenizer.ggml.merges")] {
            var tiny = TinyLlama()
            tiny.addTinyTokenizer()
            tiny.extraMetadata.append((key, value))
            let path = dir + "/bad.gguf"
            try tiny.write(to: path)
            try expect(1, ["perplexity", "-m", path, "-f", data, "-c", "16"], contains: expected)
        }
    }

    func testInfoEscapesControlCharacters() throws {
        var tiny = TinyLlama()
        tiny.addTinyTokenizer()
        tiny.extraMetadata.append(("general.name", .string("evil\u{1B}[2Jname\u{0}")))
        try tiny.write(to: dir + "/evil.gguf")
        let (out, _) = try expect(0, ["info", dir + "/evil.gguf"])
        XCTAssertFalse(out.contains("\u{1B}"), out)
        XCTAssertTrue(out.contains("evil\\u{1B}[2Jname\\u{0}"), out)
    }

    func testNonFiniteAdaptersAreErrors() throws {
        let adapter = LoRAAdapter<Float>()
        var a = [Float](repeating: 0.1, count: 64)
        a[5] = .nan
        adapter.add(try LoRAPair(name: "blk.0.attn_q", rank: 2, inFeatures: 32, outFeatures: 32, scale: 1, a: a,
                                 b: [Float](repeating: 0.2, count: 64)))
        try AdapterFile.write(adapter, description: AdapterFile.Description(alpha: 2), to: dir + "/nan.gguf")
        try expect(1, ["perplexity", "-m", model, "-f", data, "-c", "16", "--lora", dir + "/nan.gguf"], contains: "non-finite value at index 5")
        try AdapterFile.write(LoRAAdapter<Float>(), description: AdapterFile.Description(alpha: 2), to: dir + "/empty.gguf")
        try expect(1, ["perplexity", "-m", model, "-f", data, "-c", "16", "--lora", dir + "/empty.gguf"], contains: "no LoRA tensors")
        let fine = LoRAAdapter<Float>()
        fine.add(try LoRAPair(name: "blk.0.attn_q", rank: 2, inFeatures: 32, outFeatures: 32, scale: 1,
                              a: [Float](repeating: 0.1, count: 64), b: [Float](repeating: 0.2, count: 64)))
        try AdapterFile.write(fine, description: AdapterFile.Description(alpha: .nan), to: dir + "/nan-alpha.gguf")
        try expect(1, ["perplexity", "-m", model, "-f", data, "-c", "16", "--lora", dir + "/nan-alpha.gguf"], contains: "adapter.lora.alpha")
    }

    /// The first Ctrl-C stops within a step and saves; the printed command finishes the run; a second Ctrl-C exits at
    /// once. Exit status 130 either way.
    func testSignalsStopSaveAndResume() throws {
        let args = ["train", "-m", model, "--train-data", data, "--ctx", "16", "--batch", "1", "--iters", "100000", "-t", "1",
                    "--save-every", "0", "--lora-out", dir + "/s.gguf", "--seed", "3"]
        func start() throws -> (Process, Pipe) {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: LoRAKitBinary.path)
            p.arguments = args
            let out = Pipe()
            p.standardOutput = out
            p.standardError = FileHandle.nullDevice
            try p.run()
            return (p, out)
        }
        func readUntil(_ p: Pipe, _ marker: String) -> String {
            var text = ""
            let deadline = Date().addingTimeInterval(60)
            while !text.contains(marker), Date() < deadline {
                let chunk = p.fileHandleForReading.availableData
                if chunk.isEmpty { break }
                text += String(decoding: chunk, as: UTF8.self)
            }
            return text
        }
        var (p, out) = try start()
        var text = readUntil(out, "step     3")
        let signalled = Date()
        kill(p.processIdentifier, SIGINT)
        text += String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        XCTAssertLessThan(Date().timeIntervalSince(signalled), 5)
        XCTAssertEqual(p.terminationStatus, 130, text)
        XCTAssertTrue(text.contains("saved checkpoint: " + dir + "/s.checkpoint.gguf"), text)
        let command = text.components(separatedBy: "resume with:\n  ").last?.split(separator: "\n").first.map(String.init) ?? ""
        XCTAssertTrue(command.contains("--checkpoint-in " + dir + "/s.checkpoint.gguf") && command.contains("--seed 3"), text)

        (p, out) = try start()
        _ = readUntil(out, "step     2")
        kill(p.processIdentifier, SIGINT)
        usleep(50_000)
        let second = Date()
        kill(p.processIdentifier, SIGINT)
        p.waitUntilExit()
        XCTAssertLessThan(Date().timeIntervalSince(second), 1, "the second signal exits at once")
        XCTAssertEqual(p.terminationStatus, 130)
    }
}

/// A training run killed at random moments never leaves an unreadable adapter or checkpoint, always resumes, and
/// its temporary files do not outlive the next run.
final class KillTests: XCTestCase {
    func testKilledRunsAlwaysResume() throws {
        let (dir, _, _) = try tinyModelAndText("lorakit-kill", repeats: 40)
        let args = ["train", "-m", dir + "/m.gguf", "--train-data", dir + "/d.txt", "--ctx", "16", "--batch", "2", "-t", "1",
                    "--save-every", "1", "--lora-out", dir + "/a.gguf", "--seed", "5"]
        var rng = SplitMix64(seed: 9)
        for round in 0..<20 {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: LoRAKitBinary.path)
            let resuming = FileManager.default.fileExists(atPath: dir + "/a.checkpoint.gguf")
            p.arguments = args + ["--iters", "100000000"] + (resuming ? ["--checkpoint-in", dir + "/a.checkpoint.gguf"] : [])
            p.standardOutput = FileHandle.nullDevice
            p.standardError = FileHandle.nullDevice
            try p.run()
            usleep(UInt32(50_000 + (rng.next() % 450_000)))
            kill(p.processIdentifier, SIGKILL)
            p.waitUntilExit()
            for file in ["a.gguf", "a.checkpoint.gguf"] where FileManager.default.fileExists(atPath: dir + "/" + file) {
                XCTAssertNoThrow(try GGUFFile(path: dir + "/" + file), "round \(round): \(file) does not open")
            }
            if FileManager.default.fileExists(atPath: dir + "/a.gguf") {
                XCTAssertNoThrow(try AdapterLoader.load(dir + "/a.gguf"), "round \(round)")
            }
        }
        // The next run resumes (or starts) and trains 3 more steps; no temporary file is left.
        var done = 0
        var resume: [String] = []
        if FileManager.default.fileExists(atPath: dir + "/a.checkpoint.gguf") {
            done = try GGUFFile(path: dir + "/a.checkpoint.gguf").metadata.int("training.iteration_count")
            resume = ["--checkpoint-in", dir + "/a.checkpoint.gguf"]
        }
        let (status, out, err) = try LoRAKitBinary.run(args + ["--iters", String(done + 3)] + resume)
        XCTAssertEqual(status, 0, err)
        XCTAssertTrue(out.contains("finished: 3 steps"), out)
        let left = try FileManager.default.contentsOfDirectory(atPath: dir).filter { $0.contains(".tmp-") }
        XCTAssertEqual(left, [], "temporary files survived")
    }
}
