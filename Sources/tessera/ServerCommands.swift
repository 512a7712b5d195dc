// Daemon subcommands: migrate, coordinator, worker, keygen.

import ArgumentParser
import Dispatch
import Foundation
import ServiceLifecycle
import UnixSignals
import LibPQ
import Logging
import TesseraCompute
import TesseraCoordinator
import TesseraCore
import TesseraHTTP
import TesseraStore
import TesseraWorker
import TesseraWorkloads
import ZeroMQ

struct DatabaseOptions: ParsableArguments {
    @Option(name: .long, help: "libpq conninfo or postgres:// URL (default: $TESSERA_DATABASE_URL).")
    var databaseURL: String?

    func url() throws -> String {
        guard let u = databaseURL ?? Env.get("TESSERA_DATABASE_URL") else {
            throw CLIError("no database: pass --database-url URL or set TESSERA_DATABASE_URL")
        }
        return u
    }
}

struct Migrate: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Bring the database schema up to date (or down to a version).",
        discussion: "Migrations are the numbered SQL files of migrations/, built into the executable; each runs in its own transaction."
    )
    @OptionGroup var db: DatabaseOptions
    @Option(help: "Directory of NNNN_name.up.sql/.down.sql files (default: the migrations built into this executable).")
    var dir: String?
    @Option(help: "Migrate down to this version (0 removes everything).") var down: Int?
    @Flag(help: "Only print the current and latest versions.") var status = false

    func run() throws {
        try runCLI {
            let migrator = try dir.map { try Migrator(directory: $0) } ?? Migrator.builtIn()
            let directory = migrator.directory
            let conn = try PGConnection(try db.url())
            defer { conn.close() }
            let current = try migrator.currentVersion(conn)
            if status {
                printOut("schema version \(current), latest \(migrator.latestVersion) (\(directory))")
                return
            }
            if let down {
                let done = try migrator.migrateDown(conn, to: down)
                for m in done { printOut("reverted \(m.fileStem)") }
            } else {
                let done = try migrator.migrateUp(conn)
                for m in done { printOut("applied \(m.fileStem)") }
            }
            printOut("schema version \(try migrator.currentVersion(conn))")
        }
    }
}

/// Loopback-only unless keys are configured (ARCHITECTURE.md §Processes): without keys nothing authenticates the
/// peers, so only this host may reach the coordinator.
func checkBindIsSafe(_ endpoint: String, keysDir: String?) throws {
    let lower = endpoint.lowercased()
    if lower.hasPrefix("ipc://") || lower.hasPrefix("inproc://") { return }
    guard lower.hasPrefix("tcp://") else { throw CLIError("unsupported endpoint \(endpoint): use tcp://HOST:PORT") }
    if keysDir != nil { return }
    let hostPort = String(lower.dropFirst(6))
    let host: String
    if hostPort.hasPrefix("[") {
        host = String(hostPort.dropFirst().prefix { $0 != "]" })
    } else {
        host = String(hostPort.prefix { $0 != ":" })
    }
    let loopback = host == "localhost" || host.hasPrefix("127.") || host == "::1"
    if loopback { return }
    throw CLIError(
        "refusing to serve unauthenticated peers on \(endpoint): without keys the coordinator binds only to "
            + "loopback (tcp://127.0.0.1:PORT). To serve other hosts, create keys and pass them: "
            + "`tessera keygen coordinator --keys-dir DIR`, one `tessera keygen client NAME --keys-dir DIR2 "
            + "--authorize-in DIR` per worker or user, then `tessera coordinator --keys-dir DIR --bind \(endpoint)` "
            + "(docs/operations.md, \"Keys\")"
    )
}

/// The HTTP service for `--http HOST:PORT` (docs/http.md). With keys, requests need the bearer token in
/// `KEYS/http.token`, created (random, mode 0600) the first time; without keys only loopback is allowed.
func makeHTTPService(
    _ http: String, keysDir: String?, endpointFile: String?, coordinator: Coordinator, logger: Logger
) throws -> HTTPService {
    var token: String?
    if let keysDir {
        let path = "\(keysDir)/http.token"
        if let text = try? String(contentsOfFile: path, encoding: .utf8) {
            token = text.trimmingCharacters(in: .whitespacesAndNewlines)
            guard token!.count >= 16 else { throw CLIError("\(path) holds a token of \(token!.count) characters; it needs at least 16 (delete it to get a new one)") }
        } else {
            var rng = SystemRandomNumberGenerator()
            let fresh = (0..<32).map { _ in String(format: "%02x", UInt8.random(in: 0...255, using: &rng)) }.joined()
            let fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0o600)
            guard fd >= 0 else { throw CLIError("cannot create the HTTP token \(path): \(String(cString: strerror(errno)))") }
            let bytes = Array((fresh + "\n").utf8)
            let written = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            close(fd)
            guard written == bytes.count else { throw CLIError("cannot write the HTTP token \(path)") }
            logger.notice("created the HTTP bearer token", metadata: ["path": "\(path)"])
            token = fresh
        }
    }
    var config: HTTPConfiguration
    do { config = try HTTPConfiguration.parse(http, token: token) } catch { throw CLIError("\(error)") }
    config.endpointFile = endpointFile
    return HTTPService(coordinator: coordinator, registry: MetricsBackend.bootstrap(), configuration: config, logger: logger)
}

/// SIGHUP: re-read the allow-list now (it is also watched, so this only saves up to a second).
struct ReloadKeysOnHangup: Service {
    let coordinator: Coordinator
    let logger: Logger

    func run() async throws {
        for await _ in await UnixSignalsSequence(trapping: .sighup).cancelOnGracefulShutdown() {
            logger.info("SIGHUP: reloading the allow-list")
            coordinator.reloadKeys()
        }
    }
}

struct CoordinatorCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "coordinator",
        abstract: "Run the coordinator: scheduler, ZeroMQ ROUTER, PostgreSQL writes, checkpoint store.",
        discussion: "SIGTERM or Ctrl-C: stop accepting, finish writes, exit 0. Workers keep their shards and re-register with the next coordinator."
    )
    @OptionGroup var db: DatabaseOptions
    @Option(help: "ZeroMQ endpoint to bind (default: $TESSERA_COORDINATOR or tcp://127.0.0.1:5555).") var bind: String?
    @Option(
        help: ArgumentHelp(
            "HOST:PORT for the HTTP service: JSON API, Prometheus /metrics (default: $TESSERA_HTTP; none).",
            discussion: "Port 0 picks a free one (see --http-endpoint-file). Without --keys-dir only a loopback address is allowed; with it, every request but /healthz needs 'Authorization: Bearer TOKEN', the token in KEYS/http.token (docs/http.md)."))
    var http: String?
    @Option(help: "Write the HTTP service's URL to this file once it listens (useful with --http 127.0.0.1:0).")
    var httpEndpointFile: String?
    @Option(help: "Checkpoint store directory (default: $TESSERA_DATA_DIR or ./tessera-data).") var dataDir: String?
    @Option(
        help: ArgumentHelp(
            "CURVE keys directory (default: $TESSERA_KEYS_DIR).",
            discussion: "Holds coordinator.key_secret and authorized/ (one public key per worker and user). With keys, every peer must authenticate and any bind is allowed; without, only loopback. SIGHUP re-reads authorized/ (it is also watched): a removed key's session ends."))
    var keysDir: String?
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 1.0
    @Option(help: "Missed heartbeats before a worker is declared lost.") var liveness: Int = 3
    @Option(help: "Write the bound endpoint to this file once listening (useful with --bind tcp://127.0.0.1:*).")
    var endpointFile: String?
    @OptionGroup var log: LogOptions

    func run() async throws {
        try await runCLI {
            let logger = log.bootstrap(label: "tessera.coordinator")
            let endpoint = bind ?? Env.get("TESSERA_COORDINATOR") ?? "tcp://127.0.0.1:5555"
            let keys = keysDir ?? Env.get("TESSERA_KEYS_DIR")
            try checkBindIsSafe(endpoint, keysDir: keys)
            if let keys {
                do { _ = try CurveKeysDirectory.coordinator(keys) } catch { throw CLIError("\(error)") }
            }
            // Before the coordinator exists: its metrics are created when it starts and must find the backend.
            _ = MetricsBackend.bootstrap()
            var config = CoordinatorConfiguration(
                bind: endpoint, databaseURL: try db.url(),
                dataDir: dataDir ?? Env.get("TESSERA_DATA_DIR") ?? "tessera-data"
            )
            config.heartbeatInterval = heartbeat
            config.liveness = liveness
            config.endpointFile = endpointFile
            config.keysDir = keys
            let coordinator = Coordinator(config: config, catalogue: Workloads.catalogue, logger: logger)
            var services: [ServiceGroupConfiguration.ServiceConfiguration] = [.init(service: coordinator)]
            if let h = http ?? Env.get("TESSERA_HTTP") {
                services.append(.init(service: try makeHTTPService(
                    h, keysDir: keys, endpointFile: httpEndpointFile, coordinator: coordinator, logger: logger)))
            }
            services.append(.init(service: ReloadKeysOnHangup(coordinator: coordinator, logger: logger)))
            // SIGTERM / SIGINT: graceful shutdown through the ServiceGroup (finish the batch being committed, tell
            // the workers, exit 0). SIGHUP: reload the allow-list. Services stop in reverse order: the reload
            // service first, then the HTTP service, the coordinator last.
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: services,
                gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
            try await group.run()
        }
    }
}

struct WorkerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "worker",
        abstract: "Run a worker daemon with N compute slots.",
        discussion: "SIGTERM or Ctrl-C: drain (take no new shards, let running ones finish for --drain-timeout seconds, hand back the rest), exit 0."
    )
    @Option(help: "Coordinator endpoint (default: $TESSERA_COORDINATOR or tcp://127.0.0.1:5555).") var coordinator: String?
    @Option(help: "Compute slots (shards run at once).") var slots: Int = 1
    @Option(help: "Worker name (default: HOST-PID).") var name: String?
    @Option(
        help: ArgumentHelp(
            "CURVE keys directory (default: $TESSERA_KEYS_DIR).",
            discussion: "Holds this worker's key pair (client.key_secret) and the coordinator's public key (coordinator.key); needed for a coordinator that is not on loopback."))
    var keysDir: String?
    @Option(help: "OpenBLAS threads per slot.") var blasThreads: Int = 1
    @Option(
        help: ArgumentHelp(
            "Float gemm: auto, avx2 or openblas (default: $TESSERA_GEMM or auto).",
            discussion: "auto runs Tessera's own kernels: the AVX-512 build on CPUs that have AVX-512, the AVX2 build on CPUs with only AVX2 (the same bits on every such host), OpenBLAS elsewhere; avx2 forces the AVX2 build where the CPU has AVX2; openblas forces OpenBLAS and the portable kernels. Workers of one job should agree (docs/operations.md)."))
    var gemm: String?
    @Option(help: "Seconds running shards may take to finish on SIGTERM.") var drainTimeout: Double = 30
    @Option(help: "Heartbeat interval in seconds.") var heartbeat: Double = 1.0
    @Option(
        help: ArgumentHelp(
            "The worker's directory (default: $TESSERA_WORKER_DATA_DIR or $TMPDIR/tessera-worker).",
            discussion: "Its spool/ holds output the coordinator has not taken yet (it is away or slower than the shards) once a shard's share of memory is full; files are deleted with their shard."))
    var dataDir: String?
    @Option(help: "Per shard: MiB of not-yet-acknowledged output kept in memory before the spool file is used.")
    var spoolMemory: Int = 256
    @Option(help: "Per shard: MiB of spool file before the shard's computation waits for the coordinator.")
    var spoolDisk: Int = 8192
    @Flag(help: ArgumentHelp(
        "Send no shard log lines (tessera logs shows none for this worker's shards).",
        discussion: "For workers whose log lines must not leave the node, or to measure what the logs cost (ops/bench dispatch --no-shard-logs)."))
    var noShardLogs = false
    @OptionGroup var log: LogOptions

    func validate() throws {
        guard (1...256).contains(slots) else { throw ValidationError("--slots must be between 1 and 256") }
        guard (1...(1 << 20)).contains(spoolMemory) else { throw ValidationError("--spool-memory must be from 1 to 1048576 MiB") }
        guard (0...(1 << 24)).contains(spoolDisk) else { throw ValidationError("--spool-disk must be from 0 to 16777216 MiB") }
        guard (1...64).contains(blasThreads) else { throw ValidationError("--blas-threads must be between 1 and 64") }
        _ = try gemmChoice()
    }

    /// --gemm, else TESSERA_GEMM, else auto; anything else is an error naming where it came from.
    func gemmChoice() throws -> GemmChoice {
        let (value, source) = gemm.map { ($0, "--gemm") } ?? Env.get("TESSERA_GEMM").map { ($0, "TESSERA_GEMM") } ?? ("auto", "")
        guard let choice = GemmChoice(rawValue: value.lowercased()) else {
            throw ValidationError("\(source) must be auto, avx2 or openblas, not '\(value)'")
        }
        return choice
    }

    func run() async throws {
        try await runCLI {
            let logger = log.bootstrap(label: "tessera.worker")
            let keys: ClientKeys?
            do { keys = try (keysDir ?? Env.get("TESSERA_KEYS_DIR")).map(CurveKeysDirectory.client) } catch {
                throw CLIError("\(error)")
            }
            let host = ProcessInfo.processInfo.hostName
            var config = WorkerConfiguration(
                coordinator: coordinator ?? Env.get("TESSERA_COORDINATOR") ?? "tcp://127.0.0.1:5555", slots: slots,
                name: name ?? "\(host)-\(getpid())", host: host
            )
            config.blasThreads = blasThreads
            config.gemm = try gemmChoice()
            config.drainTimeout = drainTimeout
            config.heartbeatInterval = heartbeat
            config.keys = keys
            if let d = dataDir ?? Env.get("TESSERA_WORKER_DATA_DIR") { config.dataDir = d }
            config.spoolMemoryBytes = spoolMemory << 20
            config.spoolDiskBytes = spoolDisk << 20
            config.shardLogs = !noShardLogs
            let worker = try WorkerDaemon(config: config, catalogue: Workloads.catalogue, logger: logger)
            // SIGTERM / SIGINT: drain (graceful shutdown); if that outlasts the drain timeout plus the time to send
            // the last messages, the group cancels and the worker stops at once.
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: [.init(service: worker)], gracefulShutdownSignals: [.sigterm, .sigint],
                logger: logger).withMaximumShutdown(seconds: drainTimeout + 15))
            try await group.run()
        }
    }
}

struct Keygen: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create CURVE key pairs for authenticated, encrypted connections to a coordinator.",
        discussion: """
            tessera keygen coordinator --keys-dir DIR
                the coordinator's key pair (DIR/coordinator.key_secret, DIR/coordinator.key) and the empty allow-list
                DIR/authorized/. Start it with `tessera coordinator --keys-dir DIR --bind tcp://ADDRESS:PORT`.
            tessera keygen client NAME --keys-dir DIR [--authorize-in COORDINATOR_DIR]
                a worker's or user's key pair (DIR/client.key_secret, DIR/client.key). With --authorize-in (on the
                coordinator's host, or with its keys directory at hand) it also copies DIR/client.key to
                COORDINATOR_DIR/authorized/NAME.key and COORDINATOR_DIR/coordinator.key to DIR; otherwise copy those
                two public files yourself. Then `tessera worker --keys-dir DIR` or `tessera status --keys-dir DIR`.

            Revoke a key by deleting its file from authorized/; the coordinator notices within a second (or at once
            on SIGHUP) and ends that peer's session. Secret files are written mode 600 and refused if others can
            read them. Files are in ZeroMQ's certificate format (Z85 keys), readable by other ZeroMQ tools.
            """
    )
    @Argument(help: "coordinator or client.") var role: String
    @Argument(help: "For client: a name for the key (the allow-list file is NAME.key).") var name: String?
    @Option(help: "Directory to write the keys into (created if missing).") var keysDir: String
    @Option(help: "For client: the coordinator's keys directory, to authorize the new key in.") var authorizeIn: String?
    @Flag(help: "Replace existing keys (peers holding the old ones can no longer connect).") var force = false

    func validate() throws {
        switch role {
        case "coordinator":
            guard name == nil else { throw ValidationError("keygen coordinator takes no NAME") }
            guard authorizeIn == nil else { throw ValidationError("--authorize-in is for client keys") }
        case "client":
            guard let name else { throw ValidationError("keygen client needs a NAME (e.g. the worker's host name)") }
            guard Self.isValidName(name) else {
                throw ValidationError("NAME must be 1 to 64 letters, digits, '.', '_' or '-', not starting with '.'")
            }
        default:
            throw ValidationError("role must be coordinator or client, not '\(role)'")
        }
    }

    static func isValidName(_ name: String) -> Bool {
        (1...64).contains(name.utf8.count) && !name.hasPrefix(".")
            && name.utf8.allSatisfy { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: "-")
                || (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) || (UInt8(ascii: "A")...UInt8(ascii: "Z")).contains($0)
                || (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }
    }

    func run() throws {
        try runCLI {
            guard ZMQ.has("curve") else { throw CLIError("this libzmq was built without CURVE") }
            try makeDirectory(keysDir, mode: 0o700)
            let pair = try ZMQ.curveKeyPair()
            if role == "coordinator" {
                if FileManager.default.fileExists(atPath: path(CurveKeysDirectory.coordinatorSecret)), !force {
                    throw CLIError(
                        "\(path(CurveKeysDirectory.coordinatorSecret)) exists; pass --force to replace it (every worker and user then needs the new coordinator.key)")
                }
                let cert = ZMQCertificate(publicKey: pair.publicKey, secretKey: pair.secretKey, metadata: [("role", "coordinator")])
                try writePair(cert, secret: CurveKeysDirectory.coordinatorSecret, publicFile: CurveKeysDirectory.coordinatorPublic)
                let authorized = (keysDir as NSString).appendingPathComponent(CurveKeysDirectory.authorized)
                try makeDirectory(authorized, mode: 0o755)
                printOut("wrote \(path(CurveKeysDirectory.coordinatorSecret)) (secret) and \(path(CurveKeysDirectory.coordinatorPublic))")
                printOut("public key \(pair.publicKey)")
                printOut("allow-list: \(authorized)/ (add keys with `tessera keygen client NAME --keys-dir DIR --authorize-in \(keysDir)`)")
                return
            }
            let name = name!
            let cert: ZMQCertificate
            let existing = path(CurveKeysDirectory.clientSecret)
            if FileManager.default.fileExists(atPath: existing), !force {
                // Keep the key this directory already has: authorize it (again) rather than make a new one.
                guard authorizeIn != nil else {
                    throw CLIError("\(existing) exists; pass --force to replace it, or --authorize-in DIR to authorize the existing key")
                }
                do {
                    let pair = try CurveKeysDirectory.client(keysDir, requireCoordinatorKey: false).keyPair
                    cert = ZMQCertificate(publicKey: pair.publicKey, secretKey: pair.secretKey, metadata: [("name", name)])
                } catch { throw CLIError("\(error)") }
                printOut("kept the existing key pair in \(existing)")
            } else {
                cert = ZMQCertificate(publicKey: pair.publicKey, secretKey: pair.secretKey, metadata: [("name", name)])
                try writePair(cert, secret: CurveKeysDirectory.clientSecret, publicFile: CurveKeysDirectory.clientPublic)
                printOut("wrote \(existing) (secret) and \(path(CurveKeysDirectory.clientPublic))")
            }
            printOut("public key \(cert.publicKey)")
            guard let coordinatorDir = authorizeIn else {
                printOut("next: copy \(path(CurveKeysDirectory.clientPublic)) to the coordinator's authorized/\(name).key, and its coordinator.key to \(keysDir)/")
                return
            }
            let server = try loadPublic((coordinatorDir as NSString).appendingPathComponent(CurveKeysDirectory.coordinatorPublic))
            let target = ((coordinatorDir as NSString).appendingPathComponent(CurveKeysDirectory.authorized) as NSString)
                .appendingPathComponent("\(name).key")
            if FileManager.default.fileExists(atPath: target), !force,
                (try? CurveKeysDirectory.certificate(target, hint: ""))?.publicKey != cert.publicKey
            {
                throw CLIError("\(target) exists with another key named \(name); pass --force to replace it")
            }
            try atomicWrite(target, cert.render(secret: false, generatedBy: "tessera keygen"), mode: 0o644)
            try atomicWrite(path(CurveKeysDirectory.coordinatorPublic), server.render(secret: false, generatedBy: "tessera keygen"), mode: 0o644)
            printOut("authorized: \(target)")
            printOut("wrote \(path(CurveKeysDirectory.coordinatorPublic)) (the coordinator's public key \(server.publicKey))")
        }
    }

    private func path(_ file: String) -> String { (keysDir as NSString).appendingPathComponent(file) }

    private func loadPublic(_ file: String) throws -> ZMQCertificate {
        do {
            let cert = try CurveKeysDirectory.certificate(file, hint: "is it a coordinator's keys directory (`tessera keygen coordinator`)?")
            return ZMQCertificate(publicKey: cert.publicKey, metadata: cert.metadata)
        } catch { throw CLIError("\(error)") }
    }

    private func writePair(_ cert: ZMQCertificate, secret: String, publicFile: String) throws {
        try atomicWrite(path(secret), cert.render(secret: true, generatedBy: "tessera keygen"), mode: 0o600)
        try atomicWrite(path(publicFile), cert.render(secret: false, generatedBy: "tessera keygen"), mode: 0o644)
    }

    private func makeDirectory(_ dir: String, mode: Int) throws {
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: mode])
        } catch { throw CLIError("cannot create \(dir): \(error.localizedDescription)") }
    }

    /// Temp file with its final mode, fsync, rename: a reader (the coordinator's watcher) never sees half a key.
    private func atomicWrite(_ file: String, _ text: String, mode: mode_t) throws {
        let tmp = file + ".tmp-\(getpid())"
        let fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
        guard fd >= 0 else { throw CLIError("cannot write \(tmp): \(String(cString: strerror(errno)))") }
        let bytes = Array(text.utf8)
        let ok = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) == $0.count } && fchmod(fd, mode) == 0 && fsync(fd) == 0
        close(fd)
        guard ok, rename(tmp, file) == 0 else {
            unlink(tmp)
            throw CLIError("cannot write \(file): \(String(cString: strerror(errno)))")
        }
    }
}

extension ServiceGroupConfiguration {
    func withMaximumShutdown(seconds: Double) -> ServiceGroupConfiguration {
        var c = self
        c.maximumGracefulShutdownDuration = .milliseconds(Int64(seconds * 1000))
        return c
    }
}
