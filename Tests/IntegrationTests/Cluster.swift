// A real cluster for integration tests: a fresh migrated PostgreSQL database (from TESSERA_TEST_DATABASE_URL,
// started by ops/test), the `tessera` executable as coordinator and worker processes talking ZeroMQ over
// tcp loopback, and the CLI as a subprocess. Nothing is mocked.

import Foundation
import LibPQ
import TesseraProtocol
import TesseraTesting
import Testing
import ZeroMQ

enum IntegrationEnv {
    /// The repository root, from this file's path.
    static let repoRoot: String = {
        var url = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { url.deleteLastPathComponent() }
        return url.path
    }()

    /// The built `tessera` executable: $TESSERA_BIN, else .build/debug/tessera.
    static let binary: String = {
        if let b = ProcessInfo.processInfo.environment["TESSERA_BIN"], !b.isEmpty { return b }
        return "\(repoRoot)/.build/debug/tessera"
    }()

    static var ready: Bool {
        PostgresTestDatabase.isAvailable && FileManager.default.isExecutableFile(atPath: binary)
    }

    static func example(_ name: String) -> String { "\(repoRoot)/examples/\(name)" }
}

struct CommandResult {
    var status: Int32
    var stdout: String
    var stderr: String
}

/// Runs `tessera ARGS` to completion.
@discardableResult
func tessera(_ args: [String], stdin: String? = nil) throws -> CommandResult {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: IntegrationEnv.binary)
    p.arguments = args
    let out = Pipe(), err = Pipe()
    p.standardOutput = out
    p.standardError = err
    if let stdin {
        let inPipe = Pipe()
        p.standardInput = inPipe
        try p.run()
        inPipe.fileHandleForWriting.write(Data(stdin.utf8))
        try inPipe.fileHandleForWriting.close()
    } else {
        p.standardInput = FileHandle.nullDevice
        try p.run()
    }
    // Read both pipes to the end before waiting, so a large output cannot block the child.
    let errData = Locked(Data())
    let errThread = Thread { errData.set(err.fileHandleForReading.readDataToEndOfFile()) }
    errThread.start()
    let outData = out.fileHandleForReading.readDataToEndOfFile()
    p.waitUntilExit()
    while !errData.isSet { Thread.sleep(forTimeInterval: 0.001) }
    return CommandResult(
        status: p.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
        stderr: String(decoding: errData.value, as: UTF8.self)
    )
}

/// Starts `tessera ARGS` in the background with stdout and stderr going to `log`.
func spawnTessera(_ args: [String], log: String) throws -> Process {
    let p = Process()
    p.executableURL = URL(fileURLWithPath: IntegrationEnv.binary)
    p.arguments = args
    _ = FileManager.default.createFile(atPath: log, contents: nil)
    let fh = FileHandle(forWritingAtPath: log)
    p.standardOutput = fh
    p.standardError = fh
    p.standardInput = FileHandle.nullDevice
    try p.run()
    return p
}

final class Locked<T>: @unchecked Sendable {
    private let lock = NSLock()
    private var v: T
    private var wasSet = false
    init(_ v: T) { self.v = v }
    func set(_ n: T) {
        lock.lock()
        v = n
        wasSet = true
        lock.unlock()
    }
    var value: T {
        lock.lock()
        defer { lock.unlock() }
        return v
    }
    var isSet: Bool {
        lock.lock()
        defer { lock.unlock() }
        return wasSet
    }
}

struct TestFailure: Error, CustomStringConvertible {
    var description: String
    init(_ d: String) { description = d }
}

/// Coordinator + workers as real processes on one fresh database.
final class Cluster {
    let db: PostgresTestDatabase
    let dir: String
    private(set) var endpoint = ""
    /// `http://127.0.0.1:PORT` when the coordinator runs the HTTP service (`http: true`).
    private(set) var httpURL = ""
    let http: Bool
    private var coordinator: Process?
    private(set) var workers: [String: Process] = [:]
    let heartbeat: Double

    /// `prepare` runs with the cluster's directory before the coordinator starts (e.g. to mount its `data` dir).
    init(
        workers count: Int, slots: Int = 1, heartbeat: Double = 1.0, http: Bool = false,
        prepare: (String) throws -> Void = { _ in }
    ) throws {
        self.http = http
        db = try PostgresTestDatabase.create(migrate: true)
        var template = Array("/tmp/tessera-it-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
        dir = String(cString: p)
        self.heartbeat = heartbeat
        try prepare(dir)
        try startCoordinator()
        for i in 0..<count { try startWorker("w\(i + 1)", slots: slots) }
        try waitForWorkers(count)
    }

    func startCoordinator() throws {
        let endpointFile = "\(dir)/endpoint"
        let httpFile = "\(dir)/http.endpoint"
        try? FileManager.default.removeItem(atPath: endpointFile)
        try? FileManager.default.removeItem(atPath: httpFile)
        let httpArgs = http ? ["--http", "127.0.0.1:0", "--http-endpoint-file", httpFile] : []
        let p = try spawn(
            [
                "coordinator", "--database-url", db.url, "--bind", endpoint.isEmpty ? "tcp://127.0.0.1:*" : endpoint,
                "--data-dir", "\(dir)/data", "--endpoint-file", endpointFile, "--heartbeat", String(heartbeat),
                "--log-level", "warning",
            ] + httpArgs,
            log: "\(dir)/coordinator.log"
        )
        coordinator = p
        let deadline = Date().addingTimeInterval(30)
        while Date() < deadline {
            if let text = try? String(contentsOfFile: endpointFile, encoding: .utf8), !text.isEmpty,
                !http || ((try? String(contentsOfFile: httpFile, encoding: .utf8)).map { !$0.isEmpty } ?? false)
            {
                endpoint = text.trimmingCharacters(in: .whitespacesAndNewlines)
                if http { httpURL = try String(contentsOfFile: httpFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines) }
                return
            }
            guard p.isRunning else { throw TestFailure("coordinator exited: \(log("coordinator"))") }
            Thread.sleep(forTimeInterval: 0.02)
        }
        throw TestFailure("coordinator did not start: \(log("coordinator"))")
    }

    func startWorker(_ name: String, slots: Int = 1, extra: [String] = []) throws {
        workers[name] = try spawn(
            [
                "worker", "--coordinator", endpoint, "--slots", String(slots), "--name", name, "--heartbeat",
                String(heartbeat), "--drain-timeout", "5", "--log-level", "warning",
            ] + extra,
            log: "\(dir)/\(name).log"
        )
    }

    private func spawn(_ args: [String], log: String) throws -> Process { try spawnTessera(args, log: log) }

    func log(_ name: String) -> String {
        ((try? String(contentsOfFile: "\(dir)/\(name).log", encoding: .utf8)) ?? "").suffix(4000).description
    }

    /// Runs a client command against this cluster.
    @discardableResult
    func cli(_ args: [String], stdin: String? = nil) throws -> CommandResult {
        try tessera(args + ["--coordinator", endpoint], stdin: stdin)
    }

    /// One client request straight over the wire (SPEC §8), not through the CLI: the reply's status and body.
    func request(_ method: String, _ body: [String: Any], timeout: Double = 10) throws -> (status: UInt16, body: String) {
        let ctx = try ZMQContext()
        let s = try ZMQSocket(context: ctx, type: .dealer)
        defer {
            s.close()
            ctx.terminate()
        }
        try s.connect(endpoint)
        let json = try JSONSerialization.data(withJSONObject: body)
        try s.send(WireCodec.encodeForDealer(.request(ClientRequest(requestID: 1, method: method, body: Array(json)))))
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            guard try ZMQ.poll([ZMQPollItem(socket: s)], timeoutMilliseconds: 100)[0] else { continue }
            while let frames = try s.receive(dontWait: true) {
                if case .reply(let r) = try WireCodec.decode(WireCodec.splitDealerEnvelope(frames)), r.requestID == 1 {
                    return (r.status, String(decoding: r.body, as: UTF8.self))
                }
            }
        }
        throw TestFailure("no reply to \(method) within \(timeout) s")
    }

    func json(_ args: [String]) throws -> Any {
        let r = try cli(args + ["--json"])
        guard r.status == 0 else { throw TestFailure("tessera \(args) exited \(r.status): \(r.stderr)") }
        return try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
    }

    func waitForWorkers(_ n: Int, timeout: Double = 30) throws {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            let o = try json(["workers"]) as? [String: Any]
            let alive = (o?["workers"] as? [[String: Any]])?.filter { ($0["state"] as? String) == "alive" } ?? []
            if alive.count >= n { return }
            Thread.sleep(forTimeInterval: 0.1)
        }
        throw TestFailure("fewer than \(n) workers registered")
    }

    func submit(_ file: String) throws -> Int {
        let r = try cli(["submit", file])
        guard r.status == 0, let id = Int(r.stdout.trimmingCharacters(in: .whitespacesAndNewlines)) else {
            throw TestFailure("submit failed (\(r.status)): \(r.stderr)")
        }
        return id
    }

    func submit(text: String, name: String = "spec.yaml") throws -> Int {
        let path = "\(dir)/\(name)"
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        return try submit(path)
    }

    func signalWorker(_ name: String, _ sig: Int32) {
        if let p = workers[name] {
            kill(p.processIdentifier, sig)
            if sig == SIGKILL { p.waitUntilExit() }
        }
    }

    func stopCoordinator(_ sig: Int32 = SIGTERM) {
        if let p = coordinator {
            kill(p.processIdentifier, sig)
            p.waitUntilExit()
        }
        coordinator = nil
    }

    /// SQL against the cluster's database.
    func query(_ sql: String, _ params: [PGValue] = []) throws -> PGResult {
        let c = try db.connect()
        defer { c.close() }
        return try c.execute(sql, params)
    }

    func shutdown() {
        for p in workers.values where p.isRunning { kill(p.processIdentifier, SIGTERM) }
        let deadline = Date().addingTimeInterval(15)
        while workers.values.contains(where: \.isRunning), Date() < deadline { Thread.sleep(forTimeInterval: 0.02) }
        for p in workers.values where p.isRunning { kill(p.processIdentifier, SIGKILL) }
        stopCoordinator()
        db.drop()
        try? FileManager.default.removeItem(atPath: dir)
    }

    deinit {
        if coordinator != nil { shutdown() }
    }
}

/// The issue's ring example with a different shard count (and optionally other overrides).
func ringSpec(shards: Int, samples: Int = 100_000, algorithm: String = "ddim", steps: Int = 50, keep: Bool = true) -> String {
    """
    name: ring-\(shards)
    kind: sampling
    algorithm: \(algorithm)
    seed: 7
    shards: \(shards)
    params:
      target: {type: gmm, means: [[2,0],[1.414,1.414],[0,2],[-1.414,1.414],[-2,0],[-1.414,-1.414],[0,-2],[1.414,-1.414]], stds: [0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2]}
      schedule: {type: linear, beta_start: 0.0001, beta_end: 0.02, steps: 1000}
      sampling_steps: \(steps)
    \(algorithm == "ddim" ? "  eta: 0.0\n" : "")  samples: \(samples)
      keep_samples: \(keep)
    """
}

extension Cluster {
    /// SIGKILLs the worker that holds `job`'s one leased shard once that shard has registered a checkpoint at or past
    /// `step`, waits for the job to finish, and checks that the shard was leased again without counting a failure.
    /// Returns the attempt that finished and the last checkpoint step the first attempt registered.
    func killHolderAfterCheckpoint(
        job: Int, atLeast step: Int, sourceLocation: SourceLocation = #_sourceLocation
    ) throws -> (attempt: Int64, resumeStep: Int64) {
        var holder: String?
        let deadline = Date().addingTimeInterval(300)
        while Date() < deadline, holder == nil {
            let r = try query(
                """
                SELECT w.name FROM tessera_shards s JOIN tessera_workers w ON w.id = s.worker_id
                WHERE s.job_id = $1 AND s.state = 'leased' AND s.checkpoint_step >= $2
                """, [.int(Int64(job)), .int(Int64(step))])
            if r.rowCount == 1 { holder = r[0, "name"] }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let victim = try #require(holder, "no checkpoint appeared:\n\(log("coordinator"))", sourceLocation: sourceLocation)
        signalWorker(victim, SIGKILL)
        let wait = try cli(["wait", String(job), "--timeout", "900"])
        #expect(wait.status == 0, "\(wait.stderr)\n\(log("coordinator"))", sourceLocation: sourceLocation)
        let shard = try query("SELECT attempt, failures FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        let attempt = try #require(shard.int(0, "attempt"), sourceLocation: sourceLocation)
        #expect(attempt >= 2, "the shard was leased again", sourceLocation: sourceLocation)
        #expect(shard.int(0, "failures") == 0, "losing a worker is not the shard's failure", sourceLocation: sourceLocation)
        let resumed = try query(
            "SELECT max(step) AS step FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND attempt = 1",
            [.int(Int64(job))])
        return (attempt, try #require(resumed.int(0, "step"), sourceLocation: sourceLocation))
    }

    /// The sha256 of `job`'s checkpoint at `step`, if there is exactly one.
    func checkpointSHA(job: Int, step: Int) throws -> String? {
        let r = try query(
            "SELECT sha256 FROM tessera_checkpoints WHERE job_id = $1 AND kind = 'checkpoint' AND step = $2",
            [.int(Int64(job)), .int(Int64(step))])
        return r.rowCount == 1 ? r[0, "sha256"] : nil
    }

    /// Every metric row of `job` as "name step value", ordered by name and step.
    func metricRows(job: Int) throws -> [String] {
        let r = try query(
            "SELECT name, step, value FROM tessera_metrics WHERE job_id = $1 ORDER BY name, step", [.int(Int64(job))])
        return (0..<r.rowCount).map { "\(r[$0, "name"]!) \(r[$0, "step"]!) \(r[$0, "value"]!)" }
    }
}
