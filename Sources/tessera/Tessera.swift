// `tessera`: the one executable (ARCHITECTURE.md §CLI contract). Only this target reads the environment and
// bootstraps logging.

import ArgumentParser
import Foundation
import Logging
import TesseraCore
import ZeroMQ

@main
struct Tessera: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tessera",
        abstract: "A distributed experiment runner for sampling, RL fine-tuning and preference optimization.",
        discussion: """
            Submit a job spec (YAML or JSON) to a coordinator; it stores the job in PostgreSQL, splits it into shards
            and dispatches them over ZeroMQ to worker daemons. Try it on one machine with `tessera dev`.

            Environment fallbacks: TESSERA_COORDINATOR, TESSERA_DATABASE_URL, TESSERA_HTTP, TESSERA_DATA_DIR,
            TESSERA_KEYS_DIR, TESSERA_GEMM, TESSERA_WORKER_DATA_DIR.

            Shell completion: tessera --generate-completion-script bash|zsh|fish.
            """,
        version: "0.1.0",
        subcommands: [
            Submit.self, Status.self, Wait.self, Cancel.self, Retry.self, Compare.self, Workers.self, Metrics.self, Logs.self, Checkpoint.self,
            Result.self, Migrate.self, CoordinatorCommand.self, WorkerCommand.self, Dev.self, Keygen.self,
        ]
    )
}

/// `--coordinator ENDPOINT` with the TESSERA_COORDINATOR fallback.
struct ClientOptions: ParsableArguments {
    @Option(name: .long, help: "Coordinator endpoint (default: $TESSERA_COORDINATOR or tcp://127.0.0.1:5555).")
    var coordinator: String?

    @Option(name: .long, help: "Seconds to wait for the coordinator to answer.")
    var requestTimeout: Double = 10

    @Option(
        name: .long,
        help: ArgumentHelp(
            "CURVE keys directory (default: $TESSERA_KEYS_DIR).",
            discussion: "Holds this user's key pair (client.key_secret) and the coordinator's public key (coordinator.key); see `tessera keygen --help`."))
    var keysDir: String?

    var endpoint: String {
        coordinator ?? Env.get("TESSERA_COORDINATOR") ?? "tcp://127.0.0.1:5555"
    }

    func client() throws -> CoordinatorClient {
        let keys: ClientKeys?
        do {
            keys = try (keysDir ?? Env.get("TESSERA_KEYS_DIR")).map(CurveKeysDirectory.client)
        } catch {
            throw CLIError("\(error)")
        }
        return try CoordinatorClient(endpoint: endpoint, timeout: requestTimeout, keys: keys)
    }
}

struct LogOptions: ParsableArguments {
    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = "info"

    func bootstrap(label: String) -> Logger {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        var logger = Logger(label: label)
        logger.logLevel = level
        return logger
    }
}

enum Env {
    static func get(_ name: String) -> String? {
        guard let v = ProcessInfo.processInfo.environment[name], !v.isEmpty else { return nil }
        return v
    }
}

/// `runCLI` for async bodies (the daemons).
func runCLI(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch {
        throw exitCode(reporting: error)
    }
}

/// Runs a CLI body, printing `error: …` to stderr and exiting with the error's code.
func runCLI(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch {
        throw exitCode(reporting: error)
    }
}

/// Prints a failed command's error to stderr (an `ExitCode` is already reported) and gives its exit code. With
/// `--json` the same error also goes to stdout as `{"error": {"message": …, "exit_code": N}}`, so a script that
/// parses stdout gets a document either way.
private func exitCode(reporting error: any Error) -> ExitCode {
    let (message, code): (String, Int32)
    switch error {
    case let e as ExitCode:
        return e
    case let e as CLIError:
        (message, code) = (e.message, e.exitCode)
    default:
        (message, code) = ("\(error)", 1)
    }
    FileHandle.standardError.write(Data("error: \(message)\n".utf8))
    if CommandLine.arguments.dropFirst().contains("--json") {
        let doc = JSONValue.object(["error": .object(["message": .string(message), "exit_code": .int(Int(code))])])
        FileHandle.standardOutput.write(Data((doc.render() + "\n").utf8))
    }
    return ExitCode(code)
}

func printOut(_ s: String) {
    FileHandle.standardOutput.write(Data((s + "\n").utf8))
}

func printErr(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}
