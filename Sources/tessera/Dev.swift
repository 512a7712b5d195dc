// `tessera dev`: a throwaway PostgreSQL cluster + the coordinator + N worker processes on this machine.

import ArgumentParser
import Foundation
import LibPQ
import Logging
import ServiceLifecycle
import UnixSignals
import TesseraCoordinator
import TesseraHTTP
import TesseraStore
import TesseraWorkloads

/// A socket-only PostgreSQL cluster in a directory (initdb + pg_ctl). As root, the server runs as `postgres`.
/// Without `durable`, fsync, synchronous_commit and full_page_writes are off: fast for trying things out, and a
/// machine crash can lose committed work. With it, the server runs at PostgreSQL's default durability.
final class EmbeddedPostgres {
    let dir: String
    let bin: String
    let port = 5432
    let durable: Bool
    private(set) var started = false

    init(dir: String, durable: Bool) throws {
        self.dir = dir
        self.durable = durable
        guard let bin = EmbeddedPostgres.findBinDir() else {
            throw CLIError("PostgreSQL server binaries (initdb, pg_ctl) not found: run ops/setup or `apt-get install postgresql`")
        }
        self.bin = bin
    }

    static func findBinDir() -> String? {
        var candidates: [String] = []
        if let pgbin = Env.get("PGBIN") { candidates.append(pgbin) }
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: "/usr/lib/postgresql")) ?? [])
            .compactMap(Int.init).sorted(by: >)
        candidates += versions.map { "/usr/lib/postgresql/\($0)/bin" }
        for dir in (Env.get("PATH") ?? "").split(separator: ":") { candidates.append(String(dir)) }
        return candidates.first { FileManager.default.isExecutableFile(atPath: "\($0)/initdb") && FileManager.default.isExecutableFile(atPath: "\($0)/pg_ctl") }
    }

    var url: String { "postgresql://postgres@/postgres?host=\(dir)&port=\(port)" }

    private var asRoot: Bool { getuid() == 0 }

    /// Runs a command to completion with its output in `log`. posix_spawn + waitpid rather than Foundation's
    /// Process: `pg_ctl start` leaves a daemon behind that inherits descriptors, and Process then never sees the exit.
    private func run(_ args: [String], log: String) throws {
        var argv = args
        if asRoot {
            let runuser = FileManager.default.isExecutableFile(atPath: "/usr/sbin/runuser") ? "/usr/sbin/runuser" : "/sbin/runuser"
            argv = [runuser, "-u", "postgres", "--"] + args
        }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        posix_spawn_file_actions_addopen(&actions, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
        posix_spawn_file_actions_adddup2(&actions, 1, 2)
        var cargs: [UnsafeMutablePointer<CChar>?] = argv.map { strdup($0) } + [nil]
        defer { for p in cargs { free(p) } }
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, argv[0], &actions, nil, &cargs, environ)
        guard rc == 0 else { throw CLIError("cannot run \(argv[0]): error \(rc)") }
        var status: Int32 = 0
        while waitpid(pid, &status, 0) < 0 && errno == EINTR {}
        let exited = (status & 0x7f) == 0
        let code = (status >> 8) & 0xff
        guard exited && code == 0 else {
            let text = (try? String(contentsOfFile: log, encoding: .utf8)) ?? ""
            throw CLIError("\(URL(fileURLWithPath: args[0]).lastPathComponent) failed (see \(log)):\n\(text.suffix(2000))")
        }
    }

    func start() throws {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        if asRoot {
            // The server runs as postgres: it must own the directory, and every parent must be traversable.
            guard let pw = getpwnam("postgres") else {
                throw CLIError("running as root needs the `postgres` user (installed with the postgresql package)")
            }
            chown(dir, pw.pointee.pw_uid, pw.pointee.pw_gid)
        }
        chmod(dir, 0o755)
        if !FileManager.default.fileExists(atPath: "\(dir)/data/PG_VERSION") {
            try run(
                ["\(bin)/initdb", "-D", "\(dir)/data", "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync"],
                log: "\(dir)/initdb.log"
            )
        }
        try run(
            [
                "\(bin)/pg_ctl", "-D", "\(dir)/data", "-l", "\(dir)/server.log", "-w", "-t", "30", "-o",
                "-p \(port) -k \(dir) -c listen_addresses=''"
                    + (durable ? "" : " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"),
                "start",
            ],
            log: "\(dir)/pg_ctl.log"
        )
        started = true
    }

    func stop() {
        guard started else { return }
        try? run(["\(bin)/pg_ctl", "-D", "\(dir)/data", "-m", "fast", "-w", "stop"], log: "\(dir)/pg_ctl-stop.log")
        started = false
    }
}

struct Dev: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "All-in-one: a throwaway PostgreSQL cluster, the coordinator and N workers on this machine.",
        discussion: """
            Prints the coordinator endpoint, then runs until Ctrl-C (or SIGTERM), which drains the workers \
            (up to 40 s), then stops the coordinator and PostgreSQL; after 60 s the shutdown is cancelled. \
            Without --data-dir everything lives in a temporary directory that is deleted on exit; with \
            --data-dir, the database and checkpoints are kept there for the next run.
            """
    )
    @Option(help: "Worker processes to start.") var workers: Int = 2
    @Option(help: "Compute slots per worker.") var slots: Int = 1
    @Option(help: "Directory for the database and checkpoints (default: a temporary directory, deleted on exit).")
    var dataDir: String?
    @Option(help: "Coordinator endpoint to bind.") var bind: String = "tcp://127.0.0.1:5555"
    @Option(help: "HOST:PORT (loopback) for the HTTP service: JSON API and Prometheus /metrics (default: $TESSERA_HTTP; none).")
    var http: String?
    @Flag(help: ArgumentHelp(
        "Run PostgreSQL at its default durability (fsync and synchronous_commit on).",
        discussion: "Without it the embedded cluster runs with fsync=off, synchronous_commit=off and full_page_writes=off: quick to try things, but not what production pays per commit. Benchmark figures are taken with --durable."))
    var durable = false
    @OptionGroup var log: LogOptions

    func validate() throws {
        guard (0...64).contains(workers) else { throw ValidationError("--workers must be between 0 and 64") }
        guard (1...64).contains(slots) else { throw ValidationError("--slots must be between 1 and 64") }
    }

    func run() async throws {
        try await runCLI {
            let logger = log.bootstrap(label: "tessera.dev")
            try checkBindIsSafe(bind, keysDir: nil)
            let temporary = dataDir == nil
            let base: String
            if let dataDir {
                try FileManager.default.createDirectory(atPath: dataDir, withIntermediateDirectories: true)
                base = URL(fileURLWithPath: dataDir).standardizedFileURL.path
            } else {
                var template = Array("/tmp/tessera-dev-XXXXXX".utf8CString)
                guard let p = mkdtemp(&template) else { throw CLIError("cannot create a temporary directory") }
                base = String(cString: p)
            }
            chmod(base, 0o755)
            let pg = try EmbeddedPostgres(dir: "\(base)/pg", durable: durable)
            defer {
                pg.stop()
                if temporary { try? FileManager.default.removeItem(atPath: base) }
            }
            let t0 = Date()
            try pg.start()
            logger.info("postgres started", metadata: ["url": "\(pg.url)", "seconds": "\(String(format: "%.2f", Date().timeIntervalSince(t0)))"])

            let conn = try PGConnection(pg.url)
            try Migrator.builtIn().migrateUp(conn)
            conn.close()

            var config = CoordinatorConfiguration(bind: bind, databaseURL: pg.url, dataDir: "\(base)/data")
            config.heartbeatInterval = 1.0
            _ = MetricsBackend.bootstrap()
            let coordinator = Coordinator(config: config, catalogue: Workloads.catalogue, logger: Logger(label: "tessera.coordinator"))
            let httpService = try (http ?? Env.get("TESSERA_HTTP")).map {
                try makeHTTPService($0, keysDir: nil, endpointFile: nil, coordinator: coordinator, logger: Logger(label: "tessera.http"))
            }
            let databaseURL = pg.url
            let workerProcesses = DevWorkers(
                coordinator: coordinator, count: workers, slots: slots, logLevel: log.logLevel, logger: logger,
                banner: { endpoint in
                    printOut("tessera dev: coordinator at \(endpoint), \(workers) worker(s) × \(slots) slot(s), database \(databaseURL)")
                    printOut(
                        durable
                            ? "  postgres: durable (fsync=on, synchronous_commit=on: PostgreSQL's defaults)"
                            : "  postgres: NOT durable (fsync=off, synchronous_commit=off; --durable for PostgreSQL's defaults)")
                    if let h = http ?? Env.get("TESSERA_HTTP") {
                        printOut("  dashboard: http://\(h)/ (JSON API: /api/v1/jobs, Prometheus: /metrics; docs/http.md)")
                    }
                    printOut("  try: tessera submit examples/sampling-ddim-ring.yaml --coordinator \(endpoint)")
                    printOut("  stop: Ctrl-C")
                })
            // One ServiceGroup: SIGTERM/SIGINT shut the services down in reverse order, so the workers drain (their
            // last messages still reach the coordinator) before the coordinator stops; PostgreSQL stops last (defer).
            let group = ServiceGroup(configuration: ServiceGroupConfiguration(
                services: [.init(service: coordinator)] + (httpService.map { [.init(service: $0)] } ?? []) + [.init(service: workerProcesses)],
                gracefulShutdownSignals: [.sigterm, .sigint], cancellationSignals: [], logger: logger
            ).withMaximumShutdown(seconds: 60))
            try await group.run()
        }
    }
}

/// The dev cluster's worker processes as a service: started once the coordinator listens, watched while they run,
/// drained (SIGTERM, then SIGKILL after 40 s) on graceful shutdown.
final class DevWorkers: Service, @unchecked Sendable {
    // @unchecked: `children` is touched only by `run()`.
    let coordinator: Coordinator
    let count: Int
    let slots: Int
    let logLevel: String
    let logger: Logger
    let banner: @Sendable (String) -> Void
    private var children: [Process] = []

    init(
        coordinator: Coordinator, count: Int, slots: Int, logLevel: String, logger: Logger,
        banner: @escaping @Sendable (String) -> Void
    ) {
        self.coordinator = coordinator
        self.count = count
        self.slots = slots
        self.logLevel = logLevel
        self.logger = logger
        self.banner = banner
    }

    func run() async throws {
        var endpoint: String?
        while endpoint == nil {
            if Task.isShuttingDownGracefully { return }
            try await Task.sleep(for: .milliseconds(20))
            endpoint = coordinator.boundEndpoint
        }
        let exe = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().path
        for i in 0..<count {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: exe)
            p.arguments = [
                "worker", "--coordinator", endpoint!, "--slots", String(slots), "--name", "dev-worker-\(i + 1)",
                "--log-level", logLevel,
            ]
            try p.run()
            children.append(p)
        }
        banner(endpoint!)
        defer { stopChildren() }
        while !Task.isShuttingDownGracefully && !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(100))
            for (i, c) in children.enumerated() where !c.isRunning {
                logger.warning("worker exited", metadata: ["worker": "dev-worker-\(i + 1)", "status": "\(c.terminationStatus)"])
            }
            children.removeAll { !$0.isRunning }
        }
        printErr("tessera dev: stopping")
    }

    private func stopChildren() {
        for c in children where c.isRunning { kill(c.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(40)
        while children.contains(where: \.isRunning), Date() < deadline { Thread.sleep(forTimeInterval: 0.05) }
        for c in children where c.isRunning { kill(c.processIdentifier, SIGKILL) }
    }
}
