import Foundation
import LibPQ
import Synchronization
@testable import TesseraTesting
import Testing

@Suite struct TestDatabaseURLTests {
    @Test(arguments: [
        ("postgresql://postgres@/postgres?host=/tmp/x&port=5432", "postgresql://postgres@/db1?host=/tmp/x&port=5432"),
        ("postgres://u:p@localhost:5433/postgres", "postgres://u:p@localhost:5433/db1"),
        ("postgresql://localhost", "postgresql://localhost/db1"),
        ("postgresql:///postgres?host=/tmp/x&dbname=other", "postgresql:///db1?host=/tmp/x"),
        ("host=/tmp/x port=5432 user=postgres dbname=postgres", "host=/tmp/x port=5432 user=postgres dbname=postgres dbname=db1"),
    ])
    func replacesDatabase(url: String, expected: String) {
        #expect(withDatabaseName(url, "db1") == expected)
    }
}

@Suite(.enabled(if: PostgresTestDatabase.isAvailable, "set TESSERA_TEST_DATABASE_URL (ops/pg start DIR)"))
struct NotifyAndCancelTests {
    @Test func listenNotify() throws {
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let listener = try tdb.connect()
            let sender = try tdb.connect()
            defer {
                listener.close()
                sender.close()
            }
            try listener.listen("shards ready")
            let start = ContinuousClock.now
            #expect(try listener.waitForNotifications(timeout: .milliseconds(50)).isEmpty)
            #expect(ContinuousClock.now - start >= .milliseconds(40))

            try sender.notify("shards ready", payload: "job 7")
            try sender.transaction {
                try sender.notify("shards ready", payload: "job 8")
                try sender.notify("other channel", payload: "ignored")
            }
            var got = [PGNotification]()
            let deadline = ContinuousClock.now + .seconds(5)
            while got.count < 2 && ContinuousClock.now < deadline {
                got += try listener.waitForNotifications(timeout: .seconds(1))
            }
            #expect(got.map(\.payload) == ["job 7", "job 8"])
            #expect(got.allSatisfy { $0.channel == "shards ready" && $0.senderPID == sender.backendPID })
            try listener.unlisten("shards ready")
        }
    }

    @Test func cancelFromAnotherThread() throws {
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let db = try tdb.connect()
            defer { db.close() }
            let canceller = try db.makeCanceller()
            let thread = Thread {
                Thread.sleep(forTimeInterval: 0.2)
                canceller.cancel()
            }
            thread.start()
            let start = ContinuousClock.now
            do {
                try db.execute("SELECT pg_sleep(20)")
                Issue.record("not cancelled")
            } catch let e as PGError {
                #expect(e.sqlState == .queryCanceled, "\(e.debugDescription)")
            }
            #expect(ContinuousClock.now - start < .seconds(10))
            #expect(try db.execute("SELECT 1 AS one").int(0, "one") == 1)
        }
    }
}
