// `tessera dev`: the embedded PostgreSQL runs with fsync off unless --durable is given, and says which.

import Foundation
import LibPQ
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

    @Test func durableFlagKeepsPostgresDefaults() throws {
        let fast = try settings([])
        #expect(fast.fsync == "off" && fast.syncCommit == "off")
        #expect(fast.line.contains("NOT durable"))
        let durable = try settings(["--durable"])
        #expect(durable.fsync == "on" && durable.syncCommit == "on")
        #expect(durable.line.contains("durable (fsync=on"))
    }
}
