import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct LoRAKitCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "lorakit",
        abstract: "Fine-tune GGUF language models (Llama, Mistral, Qwen, Gemma, Phi-3) with LoRA on the CPU.",
        subcommands: [InfoCommand.self, TokenizeCommand.self, TrainCommand.self, GenerateCommand.self, PerplexityCommand.self, ConvertCommand.self, MergeCommand.self]
    )

    /// As the 2023 finetune: `_` in an option name means `-` (`--adam_iter` = `--adam-iter`). `--lora-scaled FILE S`
    /// becomes `--lora-scaled FILE --lora-scaled S`, one value per occurrence, so that a negative scale (which
    /// subtracts an adapter) is read as the scale rather than as an option. Applied once, to the command line.
    static func normalizedArguments(_ arguments: [String]) -> [String] {
        let names = arguments.map { arg -> String in
            guard arg.hasPrefix("--") else { return arg }
            let parts = arg.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = parts[0].replacingOccurrences(of: "_", with: "-")
            return parts.count > 1 ? name + "=" + parts[1] : name
        }
        var result: [String] = []
        var i = 0
        while i < names.count {
            if names[i] == "--lora-scaled" && i + 2 < names.count {
                result += ["--lora-scaled", names[i + 1], "--lora-scaled", names[i + 2]]
                i += 3
            } else if names[i].hasPrefix("--lora-scaled=") && i + 1 < names.count {
                result += [names[i], "--lora-scaled", names[i + 1]]
                i += 2
            } else {
                result.append(names[i])
                i += 1
            }
        }
        return result
    }

    /// Runs the command; errors from files and data print as one `error: …` line with exit status 1, while
    /// option errors keep ArgumentParser's usage message.
    static func main() {
        do {
            var command = try parseAsRoot(normalizedArguments(Array(CommandLine.arguments.dropFirst())))
            try command.run()
        } catch let error as CLIError {
            CLI.fail(error.description)
        } catch let error where !(error is CleanExit) && !(error is ExitCode) && !(error is ValidationError)
            && String(reflecting: type(of: error)).hasPrefix("ArgumentParser.") == false {
            CLI.fail(String(describing: error))
        } catch {
            exit(withError: error)
        }
    }
}
