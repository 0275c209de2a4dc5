import ArgumentParser
import Foundation
import GGUF
import Tokenizer

struct TokenizeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokenize",
        abstract: "Show the token ids and pieces of a text with a model's own tokenizer (llama.cpp's ids).",
        discussion: "Works on models and vocabulary-only GGUF files."
    )

    @Option(name: [.customShort("m"), .long], help: "The GGUF model or vocabulary file.")
    var model: String

    @Argument(help: "The text to tokenize (or use -f).")
    var text: String?

    @Option(name: [.customShort("f"), .long], help: "Read the text from this file.")
    var file: String?

    @Flag(help: "Print {\"ids\": [...], \"pieces\": [...]} on one line.")
    var json = false

    @Flag(name: .customLong("no-bos"), help: "Do not add BOS/EOS even when the model asks for them.")
    var noBOS = false

    @Flag(name: .customLong("no-parse-special"), help: "Treat special token texts such as <|im_start|> as plain text.")
    var noParseSpecial = false

    @Flag(name: .customLong("ids"), help: "Print only the ids, space-separated.")
    var idsOnly = false

    func validate() throws {
        if (text == nil) == (file == nil) { throw ValidationError("give either TEXT or -f FILE") }
    }

    func run() throws {
        let gguf = try CLI.open(model)
        let tokenizer: Tokenizer
        do { tokenizer = try Tokenizer(file: gguf) } catch { throw CLIError("\(model): \(error)") }
        let bytes: [UInt8]
        if let file {
            let data: [UInt8]
        do { data = try FileReader.readAll(file) } catch { throw CLIError(String(describing: error)) }
            bytes = Array(data)
        } else {
            bytes = Array(text!.utf8)
        }
        let ids = tokenizer.encode(bytes: bytes, addSpecial: !noBOS, parseSpecial: !noParseSpecial)
        if json {
            print(JSON.object([("ids", .array(ids.map { .int(Int64($0)) })),
                               ("pieces", .array(ids.map { .string(tokenizer.tokenText($0)) }))]).text)
        } else if idsOnly {
            print(ids.map(String.init).joined(separator: " "))
        } else {
            for id in ids {
                let piece = String(decoding: tokenizer.piece(id, special: true), as: UTF8.self)
                print(String(id).leftPadded(6) + " -> '" + piece + "'")
            }
            print("\(ids.count) tokens")
        }
    }
}

extension String {
    func leftPadded(_ width: Int) -> String { count >= width ? self : String(repeating: " ", count: width - count) + self }
}
