// `tessera dev`: the embedded PostgreSQL runs with fsync off unless --durable is given, and says which.

import Foundation
import LibPQ
import TesseraTesting
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct DevTests {
    /// Starts `tessera dev ARGS --workers 0`, returns the database's fsync and synchronous_commit settings and the
    /// line that named them, then stops it with SIGINT.
    func settings(_ extra: [String]) throws -> (fsync: String, syncCommit: String, line: String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: IntegrationEnv.binary)
        p.arguments = ["dev", "--workers", "0", "--bind", "tcp://127.0.0.1:*", "--log-level", "warning"] + extra
        let out = Pipe()
        p.standardOutput = out
        p.standardError = FileHandle.nullDevice
        try p.run()
        defer {
            kill(p.processIdentifier, SIGINT)
            p.waitUntilExit()
        }
        var text = ""
        let deadline = Date().addingTimeInterval(60)
        while !text.contains("postgres:"), Date() < deadline, p.isRunning {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            text += String(decoding: chunk, as: UTF8.self)
        }
        let url = try #require(text.range(of: "database ").map { text[$0.upperBound...].prefix { !$0.isNewline } })
        let db = try PGConnection(String(url))
        defer { db.close() }
        let line = text.split(separator: "\n").first { $0.contains("postgres:") }.map(String.init) ?? ""
        return (try db.execute("SHOW fsync")[0, 0]!, try db.execute("SHOW synchronous_commit")[0, 0]!, line)
    }

    /// Installed elsewhere: the binary copied to a temporary prefix, run from there with no source tree around it
    /// (migrations travel inside it), migrates a database, runs `tessera dev` and a job of an example to the end.
    @Test func aCopiedBinaryRunsDevAndAnExampleAnywhere() throws {
        var template = Array("/tmp/tessera-prefix-XXXXXX".utf8CString)
        guard let p = mkdtemp(&template) else { throw TestFailure("mkdtemp failed") }
        let prefix = String(cString: p)
        defer { try? FileManager.default.removeItem(atPath: prefix) }
        chmod(prefix, 0o755)  // tessera dev's PostgreSQL runs as postgres when we are root
        try FileManager.default.createDirectory(atPath: "\(prefix)/bin", withIntermediateDirectories: true)
        let bin = "\(prefix)/bin/tessera"
        try FileManager.default.copyItem(atPath: IntegrationEnv.binary, toPath: bin)
        try FileManager.default.copyItem(atPath: IntegrationEnv.example("noop.yaml"), toPath: "\(prefix)/noop.yaml")
        func run(_ args: [String]) throws -> (status: Int32, out: String, err: String) {
            let proc = Process()
            proc.executableURL = URL(fileURLWithPath: bin)
            proc.arguments = args
            proc.currentDirectoryURL = URL(fileURLWithPath: prefix)
            let out = Pipe(), err = Pipe()
            proc.standardOutput = out
            proc.standardError = err
            try proc.run()
            let o = out.fileHandleForReading.readDataToEndOfFile(), e = err.fileHandleForReading.readDataToEndOfFile()
            proc.waitUntilExit()
            return (proc.terminationStatus, String(decoding: o, as: UTF8.self), String(decoding: e, as: UTF8.self))
        }
        // Migrations from inside the binary, against a database that has none.
        let db = try PostgresTestDatabase.create(migrate: false)
        defer { db.drop() }
        let migrate = try run(["migrate", "--database-url", db.url])
        #expect(migrate.status == 0, "migrate: \(migrate.err)")
        let status = try run(["migrate", "--status", "--database-url", db.url])
        #expect(status.status == 0, "migrate --status: \(status.err)")

        // tessera dev from the prefix, and the example submitted and finished there.
        let endpoint = "tcp://127.0.0.1:\(try StandbyTests.freePort())"
        let dev = Process()
        dev.executableURL = URL(fileURLWithPath: bin)
        dev.arguments = ["dev", "--workers", "1", "--slots", "2", "--bind", endpoint, "--log-level", "warning"]
        dev.currentDirectoryURL = URL(fileURLWithPath: prefix)
        let out = Pipe()
        dev.standardOutput = out
        dev.standardError = FileHandle.nullDevice
        try dev.run()
        defer {
            kill(dev.processIdentifier, SIGINT)
            dev.waitUntilExit()
        }
        var banner = ""
        let deadline = Date().addingTimeInterval(60)
        while !banner.contains("stop: Ctrl-C"), Date() < deadline, dev.isRunning {
            let chunk = out.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            banner += String(decoding: chunk, as: UTF8.self)
        }
        #expect(banner.contains("coordinator at \(endpoint)"), "tessera dev printed: \(banner)")
        let submit = try run(["submit", "noop.yaml", "--set", "shards=40", "--coordinator", endpoint])
        #expect(submit.status == 0, "submit: \(submit.err)")
        let job = submit.out.trimmingCharacters(in: .whitespacesAndNewlines)
        let wait = try run(["wait", job, "--timeout", "120", "--coordinator", endpoint])
        #expect(wait.status == 0, "wait: \(wait.err)")
        let result = try run(["result", job, "--json", "--coordinator", endpoint])
        #expect(result.status == 0 && result.out.contains("\"shards\":40"), "result: \(result.out) \(result.err)")
    }

    @Test func durableFlagKeepsPostgresDefaults() throws {
        let fast = try settings([])
        #expect(fast.fsync == "off" && fast.syncCommit == "off")
        #expect(fast.line.contains("NOT durable"))
        let durable = try settings(["--durable"])
        #expect(durable.fsync == "on" && durable.syncCommit == "on")
        #expect(durable.line.contains("durable (fsync=on"))
    }
}
