// A standby coordinator (docs/operations.md, "Standby coordinator"): two coordinators on one database, only the one
// holding the advisory lock serves; SIGKILL of the active one and the standby takes over, the worker (given both
// endpoints) follows, the job finishes with nothing lost or run twice and no attempt spent; the restarted old active
// waits as the new standby.

import Foundation
import LibPQ
import TesseraTesting
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct StandbyTests {
    /// A free loopback port (bound and released; the coordinators bind fixed ports so the worker can list both).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        addr.sin_port = 0
        var len = socklen_t(MemoryLayout<sockaddr_in>.size)
        let ok = withUnsafeMutablePointer(to: &addr) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                bind(fd, $0, len) == 0 && getsockname(fd, $0, &len) == 0
            }
        }
        guard ok else { throw TestFailure("no free port") }
        return Int(UInt16(bigEndian: addr.sin_port))
    }

    final class Node {
        let process: Process
        let log: String
        init(_ args: [String], log: String) throws {
            self.log = log
            process = try spawnTessera(args, log: log)
        }
        var text: String { (try? String(contentsOfFile: log, encoding: .utf8)) ?? "" }
        func kill(_ sig: Int32) {
            guard process.isRunning else { return }
            Foundation.kill(process.processIdentifier, sig)
            process.waitUntilExit()
        }
    }

    @Test func standbyTakesOverWhenTheActiveCoordinatorIsKilled() throws {
        let db = try PostgresTestDatabase.create(migrate: true)
        defer { db.drop() }
        var template = Array("/tmp/tessera-standby-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
        let dir = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let a = "tcp://127.0.0.1:\(try Self.freePort())", b = "tcp://127.0.0.1:\(try Self.freePort())"
        let both = "\(a),\(b)"
        func coordinator(_ name: String, bind: String) throws -> Node {
            try? FileManager.default.removeItem(atPath: "\(dir)/\(name).endpoint")
            return try Node(
                ["coordinator", "--database-url", db.url, "--bind", bind, "--data-dir", "\(dir)/data",
                 "--endpoint-file", "\(dir)/\(name).endpoint", "--log-level", "info"],
                log: "\(dir)/\(name).log")
        }
        func listening(_ name: String) -> Bool { FileManager.default.fileExists(atPath: "\(dir)/\(name).endpoint") }
        func waitFor(_ what: String, timeout: Double = 30, _ condition: () throws -> Bool) throws {
            let deadline = Date().addingTimeInterval(timeout)
            while Date() < deadline {
                if try condition() { return }
                Thread.sleep(forTimeInterval: 0.02)
            }
            throw TestFailure("timed out waiting for \(what)")
        }

        var first = try coordinator("a", bind: a)
        try waitFor("the first coordinator to listen") { listening("a") }
        let second = try coordinator("b", bind: b)
        defer { second.kill(SIGKILL) }
        try waitFor("the second coordinator to say it is a standby") { second.text.contains("standby") }
        #expect(!listening("b"), "a standby must not serve")

        let worker = try Node(
            ["worker", "--coordinator", both, "--slots", "2", "--name", "w1", "--drain-timeout", "5", "--log-level", "info"],
            log: "\(dir)/w1.log")
        defer { worker.kill(SIGKILL) }
        func cli(_ args: [String]) throws -> CommandResult {
            try tessera(args + ["--coordinator", both, "--request-timeout", "2"])
        }
        try waitFor("the worker to register") {
            let r = try cli(["workers", "--json"])
            return r.status == 0 && r.stdout.contains("\"alive\"")
        }

        let spec = "\(dir)/job.yaml"
        try "name: failover\nkind: rl\nalgorithm: noop\nseed: 1\nshards: 6\nparams: {metrics: 40, sleep_ms: 1500, result_bytes: 1000}\n"
            .write(toFile: spec, atomically: true, encoding: .utf8)
        let submitted = try cli(["submit", spec])
        #expect(submitted.status == 0, "\(submitted.stderr)")
        let job = try #require(Int64(submitted.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        let conn = try db.connect()
        defer { conn.close() }
        try waitFor("a shard to run") {
            try conn.execute("SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND state = 'leased'", [.int(job)]).int(0, "n")! > 0
        }

        first.kill(SIGKILL)
        let killed = Date()
        try waitFor("the standby to serve") { listening("b") }
        try waitFor("a client request to be answered") { try cli(["workers", "--json"]).status == 0 }
        let serviceBack = Date().timeIntervalSince(killed)
        try waitFor("the worker to re-register with the new coordinator") {
            let r = try cli(["workers", "--json"])
            guard r.status == 0, let o = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any],
                let coordinator = o["coordinator"] as? [String: Any] else { return false }
            return (coordinator["connected_workers"] as? Int) == 1
        }
        let workerBack = Date().timeIntervalSince(killed)
        print("standby failover: service back \(String(format: "%.2f", serviceBack)) s, worker back \(String(format: "%.2f", workerBack)) s after SIGKILL of the active coordinator")

        let waited = try tessera(["wait", String(job), "--coordinator", both, "--timeout", "120"])
        #expect(waited.status == 0, "\(waited.stdout) \(waited.stderr)\n\(second.text.suffix(3000))")

        // Nothing lost, nothing twice, no attempt charged to the job: every shard succeeded with failures 0, and the
        // metric rows of its final attempt are steps 1...40 exactly once.
        let shards = try conn.execute(
            "SELECT idx, state::text AS state, attempt, failures FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(job)])
        #expect(shards.rowCount == 6)
        for i in 0..<shards.rowCount {
            #expect(shards[i, "state"] == "succeeded")
            #expect(shards.int(i, "failures") == 0)
            let idx = shards.int(i, "idx")!, attempt = shards.int(i, "attempt")!
            let steps = try conn.execute(
                "SELECT step FROM tessera_metrics WHERE job_id = $1 AND shard_idx = $2 AND attempt = $3 ORDER BY step",
                [.int(job), .int(Int64(idx)), .int(Int64(attempt))])
            #expect((0..<steps.rowCount).map { steps.int($0, "step")! } == Array(Int64(1)...40), "shard \(idx)")
        }
        let result = try conn.execute("SELECT result::text AS r FROM tessera_jobs WHERE id = $1", [.int(job)])
        let merged = try #require(result[0, "r"].flatMap { try JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] })
        #expect(merged["results_verified"] as? Int == 6, "every shard's result bytes checked by the merge")

        // The old active, restarted, waits as the standby now.
        first = try coordinator("a", bind: a)
        defer { first.kill(SIGKILL) }
        try waitFor("the restarted coordinator to say it is a standby") { first.text.contains("standby") }
        #expect(!listening("a"))
    }
}
