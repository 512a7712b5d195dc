import Foundation
import CLibPQ
@testable import LibPQ
import Synchronization
@testable import TesseraTesting
import Testing

/// Opens a connection to a fresh database, runs `body`, then closes and drops both.
private func withDB<T>(_ body: (PGConnection, PostgresTestDatabase) throws -> T) throws -> T {
    try PostgresTestDatabase.with(migrate: false) { tdb in
        let db = try tdb.connect()
        defer { db.close() }
        return try body(db, tdb)
    }
}

private func expectPGError(
    _ code: PGError.Code, sqlState: SQLState? = nil, sourceLocation: SourceLocation = #_sourceLocation,
    _ body: () throws -> Void
) {
    do {
        try body()
        Issue.record("expected PGError.\(code), nothing thrown", sourceLocation: sourceLocation)
    } catch let e as PGError {
        #expect(e.code == code, "\(e.debugDescription)", sourceLocation: sourceLocation)
        if let sqlState { #expect(e.sqlState == sqlState, "\(e.debugDescription)", sourceLocation: sourceLocation) }
    } catch {
        Issue.record("expected PGError, got \(error)", sourceLocation: sourceLocation)
    }
}

@Suite struct PGValueTests {
    @Test func literals() {
        let values: [PGValue] = ["a", 1, 2.5, true, nil]
        #expect(values == [.text("a"), .int(1), .double(2.5), .bool(true), .null])
        #expect(PGValue(Int32(7)) == .int(7))
        #expect(PGValue(Optional<String>.none) == .null)
        #expect(PGValue(Optional("x")) == .text("x"))
        #expect(PGValue([UInt8]([1, 2])) == .bytea([1, 2]))
    }

    @Test func sqlStateIsOpen() {
        let s = SQLState("23505")
        #expect(s == .uniqueViolation)
        #expect(s.isIntegrityConstraintViolation)
        #expect(SQLState("XX999").description == "XX999")
        #expect(SQLState.serializationFailure.isTransactionRetryable)
    }

    @Test func errorDescriptionHidesQuery() {
        let e = PGError(
            code: .queryFailed, message: "boom", sqlState: .uniqueViolation, detail: "Key (id)=(1) already exists.",
            query: "INSERT secret")
        #expect(!e.description.contains("secret"))
        #expect(!e.description.contains("Key (id)"))
        #expect(e.description.contains("23505"))
        #expect(e.debugDescription.contains("INSERT secret"))
        #expect(e.debugDescription.contains("Key (id)=(1)"))
    }
}

@Suite(.enabled(if: PostgresTestDatabase.isAvailable, "set TESSERA_TEST_DATABASE_URL (ops/pg start DIR)"))
struct PGConnectionTests {
    /// A statement with parameters is parsed and planned once per connection: later calls run the prepared one.
    @Test func parameterisedStatementsArePreparedOnce() throws {
        try withDB { db, _ in
            for i in 0..<3 { #expect(try db.execute("SELECT $1::bigint + 1 AS n", [.int(Int64(i))]).int(0, "n") == Int64(i) + 1) }
            _ = try db.execute("SELECT $1::bigint + 1 AS n", [.null])  // other parameter types: a second statement
            let r = try db.execute("SELECT count(*) AS n FROM pg_prepared_statements WHERE statement = 'SELECT $1::bigint + 1 AS n'")
            #expect(r.int(0, "n") == 2)
            // A failed statement inside a transaction does not poison the cache for the next one.
            #expect(throws: PGError.self) { try db.transaction { _ = try db.execute("SELECT 1 / $1::int", [.int(0)]) } }
            #expect(try db.execute("SELECT 1 / $1::int AS q", [.int(1)]).int(0, "q") == 1)
        }
    }

    @Test func everyTypeRoundTrips() throws {
        try withDB { db, _ in
            let text = "héllo 🌍 日本語 tab\t nl\n cr\r bs\\ q' dq\" \u{7f} end"
            let bytes = (0...255).map(UInt8.init) + [0, 0, 255]
            let r = try db.execute(
                """
                SELECT $1::text AS t, $2::bigint AS i, $3::bigint AS imin, $4::float8 AS d, $5::bool AS b,
                       $6::bool AS f, $7::bytea AS y, $8::jsonb AS j, $9::text AS n, $10::bytea AS empty,
                       $11 AS untyped
                """,
                [
                    .text(text), .int(.max), .int(.min), .double(0.1), .bool(true), .bool(false), .bytea(bytes),
                    .json(#"{"a": [1, 2.5, "x"]}"#), .null, .bytea([]), "plain",
                ])
            #expect(r.rowCount == 1)
            #expect(r.columnNames == ["t", "i", "imin", "d", "b", "f", "y", "j", "n", "empty", "untyped"])
            #expect(r[0, "t"] == text)
            #expect(r.int(0, "i") == .max)
            #expect(r.int(0, "imin") == .min)
            #expect(r.double(0, "d") == 0.1)
            #expect(r.bool(0, "b") == true)
            #expect(r.bool(0, "f") == false)
            #expect(r.bytea(0, "y") == bytes)
            #expect(r[0, "j"] == #"{"a": [1, 2.5, "x"]}"#)
            #expect(r[0, "n"] == nil)
            #expect(r.isNull(0, "n"))
            #expect(r.int(0, "n") == nil)
            #expect(r.bytea(0, "empty") == [])
            #expect(r[0, "untyped"] == "plain")
            #expect(r[0, 0] == text)
        }
    }

    @Test func doublesRoundTripBitExact() throws {
        try withDB { db, _ in
            try db.execute("CREATE TABLE d (i int PRIMARY KEY, v float8)")
            var rng = SystemRandomNumberGenerator()
            var values: [Double] = [
                0, -0.0, .nan, .infinity, -.infinity, .leastNonzeroMagnitude, -.leastNonzeroMagnitude,
                .leastNormalMagnitude, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 0.1, 1.0 / 3, 1e300,
                123456789.123456789, .pi, .ulpOfOne, 1 + .ulpOfOne,
            ]
            for _ in 0..<400 {
                let d = Double(bitPattern: rng.next())
                if !d.isNaN { values.append(d) }
                values.append(Double.random(in: -1...1))
            }
            for (i, v) in values.enumerated() {
                // As a bind and back through a float8 column.
                try db.execute("INSERT INTO d VALUES ($1, $2)", [.int(Int64(i)), .double(v)])
            }
            let r = try db.execute("SELECT i, v, v::text AS t FROM d ORDER BY i")
            #expect(r.rowCount == values.count)
            for (i, v) in values.enumerated() {
                let back = try #require(r.double(i, "v"), "row \(i) text \(r[i, "t"] ?? "nil")")
                if v.isNaN {
                    #expect(back.isNaN)
                } else {
                    #expect(back.bitPattern == v.bitPattern, "\(v) came back as \(back) (text \(r[i, "t"]!))")
                }
            }
            // And through a direct SELECT of the bind.
            let s = try db.execute("SELECT $1::float8 AS a, $2::float8 AS b", [.double(-0.0), .double(.nan)])
            #expect(s.double(0, "a")?.sign == .minus)
            #expect(s.double(0, "b")?.isNaN == true)
        }
    }

    @Test func uniqueViolationCarriesSQLState() throws {
        try withDB { db, _ in
            try db.execute("CREATE TABLE u (id int CONSTRAINT u_pk PRIMARY KEY)")
            try db.execute("INSERT INTO u VALUES ($1)", [1])
            do {
                try db.execute("INSERT INTO u VALUES ($1)", [1])
                Issue.record("no error")
            } catch let e as PGError {
                #expect(e.code == .queryFailed)
                #expect(e.sqlState == .uniqueViolation)
                #expect(e.constraint == "u_pk")
                #expect(e.detail?.contains("already exists") == true)
                #expect(e.query == "INSERT INTO u VALUES ($1)")
                #expect(!e.description.contains("INSERT"))
            }
            // The connection is usable after an error outside a transaction.
            #expect(try db.execute("SELECT count(*) AS n FROM u").int(0, "n") == 1)
            expectPGError(.queryFailed, sqlState: .syntaxError) { try db.execute("SELEC 1") }
            expectPGError(.queryFailed, sqlState: .undefinedTable) { try db.execute("SELECT * FROM nope") }
        }
    }

    @Test func affectedRowsAndScripts() throws {
        try withDB { db, _ in
            try db.executeScript(
                """
                CREATE TABLE a (id int PRIMARY KEY, s text);
                INSERT INTO a SELECT g, 'x' FROM generate_series(1, 5) g;
                DROP TABLE IF EXISTS does_not_exist;  -- a NOTICE, which must not be printed
                """)
            let u = try db.execute("UPDATE a SET s = $1 WHERE id <= $2", ["y", 3])
            #expect(u.affectedRows == 3)
            #expect(u.commandTag == "UPDATE 3")
            #expect(u.rowCount == 0)
            let s = try db.execute("SELECT id FROM a WHERE s = $1 ORDER BY id", ["y"])
            #expect((0..<s.rowCount).map { s.int($0, "id") } == [1, 2, 3])
            expectPGError(.invalidParameter) { try db.execute("SELECT $1::text", [.text("a\u{0}b")]) }
            expectPGError(.badResult) { try db.execute("COPY a FROM STDIN") }
            #expect(try db.execute("SELECT 1 AS one").int(0, "one") == 1)
        }
    }

    @Test func transactionRollsBackOnThrow() throws {
        struct Boom: Error {}
        try withDB { db, _ in
            try db.execute("CREATE TABLE t (id int PRIMARY KEY)")
            do {
                try db.transaction { () throws -> Void in
                    try db.execute("INSERT INTO t VALUES (1)")
                    throw Boom()
                }
                Issue.record("transaction did not rethrow")
            } catch is Boom {
            }
            #expect(!db.inTransaction)
            #expect(try db.execute("SELECT count(*) AS n FROM t").int(0, "n") == 0)

            // A failing statement inside: rolled back, rethrown as PGError.
            expectPGError(.queryFailed, sqlState: .uniqueViolation) {
                try db.transaction {
                    try db.execute("INSERT INTO t VALUES (2)")
                    try db.execute("INSERT INTO t VALUES (2)")
                }
            }
            #expect(try db.execute("SELECT count(*) AS n FROM t").int(0, "n") == 0)

            // Commit, with a nested transaction (savepoint) that fails and one that succeeds.
            let v = try db.transaction {
                try db.execute("INSERT INTO t VALUES (10)")
                do {
                    try db.transaction { () throws -> Void in
                        try db.execute("INSERT INTO t VALUES (11)")
                        throw Boom()
                    }
                } catch {}
                try db.transaction { () throws -> Void in try db.execute("INSERT INTO t VALUES (12)") }
                return 42
            }
            #expect(v == 42)
            let r = try db.execute("SELECT id FROM t ORDER BY id")
            #expect((0..<r.rowCount).map { r.int($0, "id") } == [10, 12])
        }
    }

    @Test func copyTenThousandAwkwardRows() throws {
        try withDB { db, _ in
            try db.execute("CREATE TABLE \"my \"\"table\" (id bigint, s text, d float8, b bool, y bytea, j jsonb)")
            let awkward = ["tab\there", "nl\nhere", "cr\rhere", "back\\slash", "\\.", "\\N", "", "ünï 🌍", "\\x41"]
            var rows = [[PGValue]]()
            for i in 0..<10_000 {
                let s = awkward[i % awkward.count] + "\t\(i)\n\\"
                rows.append([
                    .int(Int64(i)), i % 97 == 0 ? .null : .text(s), .double(Double(i) / 7),
                    .bool(i % 2 == 0), .bytea([UInt8(i & 0xff), 0, 9, 10, 92]), .json(#"{"i": \#(i), "s": "a\tb"}"#),
                ])
            }
            let n = try db.copyIn(table: "my \"table", columns: ["id", "s", "d", "b", "y", "j"], rows: rows)
            #expect(n == 10_000)
            let r = try db.execute("SELECT id, s, d, b, y, j->>'s' AS js FROM \"my \"\"table\" ORDER BY id")
            #expect(r.rowCount == 10_000)
            for i in 0..<r.rowCount {
                #expect(r.int(i, "id") == Int64(i))
                if i % 97 == 0 {
                    #expect(r[i, "s"] == nil)
                } else {
                    #expect(r[i, "s"] == awkward[i % awkward.count] + "\t\(i)\n\\")
                }
                #expect(r.double(i, "d") == Double(i) / 7)
                #expect(r.bool(i, "b") == (i % 2 == 0))
                #expect(r.bytea(i, "y") == [UInt8(i & 0xff), 0, 9, 10, 92])
                #expect(r[i, "js"] == "a\tb")
            }

            // A bad row aborts the COPY; nothing of it is stored and the connection stays usable.
            expectPGError(.invalidParameter) {
                try db.copyIn(table: "my \"table", columns: ["id", "s"], rows: [[1, "ok"], [2]])
            }
            expectPGError(.copyFailed, sqlState: .invalidTextRepresentation) {
                try db.copyIn(table: "my \"table", columns: ["id"], rows: [["not a number"]])
            }
            expectPGError(.copyFailed, sqlState: .undefinedTable) {
                try db.copyIn(table: "missing", columns: ["id"], rows: [[1]])
            }
            #expect(try db.execute("SELECT count(*) AS n FROM \"my \"\"table\"").int(0, "n") == 10_000)
        }
    }

    @Test func badURLGivesConnectionFailed() throws {
        func openFDs() -> Int { (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count) ?? 0 }
        let before = openFDs()
        for url in [
            "postgresql://postgres@/postgres?host=/nonexistent-tessera-dir&port=1",
            "host=/nonexistent-tessera-dir port=1 user=postgres",
            "this is = not ' a conninfo",
            "postgresql://[bad",
            "nosuchoption=1",
        ] {
            do {
                let c = try PGConnection(url)
                c.close()
                Issue.record("connected to \(url)")
            } catch let e as PGError {
                #expect(e.code == .connectionFailed)
                #expect(!e.message.isEmpty)
            }
        }
        for _ in 0..<200 { _ = try? PGConnection("host=/nonexistent-tessera-dir port=1") }
        #expect(openFDs() <= before + 2, "file descriptors leaked on failed connects")

        if let admin = PostgresTestDatabase.adminURL {
            // A reachable server but a database that does not exist.
            do {
                let c = try PGConnection(withDatabaseName(admin, "tessera_no_such_db"))
                c.close()
                Issue.record("connected to a database that does not exist")
            } catch let e as PGError {
                #expect(e.code == .connectionFailed)
                #expect(e.message.contains("tessera_no_such_db"))
            }
        }
    }

    @Test func closeIsIdempotentAndUseAfterCloseThrows() throws {
        try withDB { db, tdb in
            let c = try tdb.connect()
            #expect(c.isOpen)
            #expect(c.serverVersion >= 150000)
            c.close()
            c.close()
            #expect(!c.isOpen)
            expectPGError(.closed) { try c.execute("SELECT 1") }
            expectPGError(.closed) { try c.copyIn(table: "x", columns: ["a"], rows: []) }
            _ = db
        }
    }

    @Test func serverSideDisconnectIsConnectionLost() throws {
        try withDB { db, tdb in
            let victim = try tdb.connect()
            defer { victim.close() }
            try db.execute("SELECT pg_terminate_backend($1::int)", [.int(Int64(victim.backendPID))])
            do {
                try victim.execute("SELECT 1")
                Issue.record("terminated connection still works")
            } catch let e as PGError {
                // 57P01 admin_shutdown ends the session: reported as lost, whatever PQstatus says yet.
                #expect(e.code == .connectionLost, "\(e.debugDescription)")
            }
            #expect(!victim.isOpen)
        }
    }

    @Test("Which failures end a session: connection-exception and shutdown SQLSTATEs, libpq's socket messages; not a cancel or a constraint")
    func sessionLostClassification() {
        for state in ["08006", "08003", "57P01", "57P02", "57P03"] {
            #expect(PGConnection.sessionLost(status: CONNECTION_OK, sqlState: SQLState(state), message: "x"), "\(state)")
        }
        for state in ["57014", "23505", "40001", "42P01"] {
            #expect(!PGConnection.sessionLost(status: CONNECTION_OK, sqlState: SQLState(state), message: "server closed the connection"), "\(state)")
        }
        #expect(PGConnection.sessionLost(status: CONNECTION_OK, sqlState: nil, message: "server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally"))
        #expect(PGConnection.sessionLost(status: CONNECTION_OK, sqlState: nil, message: "no connection to the server"))
        #expect(PGConnection.sessionLost(status: CONNECTION_BAD, sqlState: nil, message: ""))
        #expect(!PGConnection.sessionLost(status: CONNECTION_OK, sqlState: nil, message: "query failed"))
    }

    @Test func skipLockedClaimsAreDisjoint() throws {
        try withDB { setup, tdb in
            try setup.executeScript(
                """
                CREATE TABLE q (id bigint PRIMARY KEY, state text NOT NULL DEFAULT 'queued', taken_by int);
                INSERT INTO q (id) SELECT g FROM generate_series(1, 600) g;
                """)
            // Deterministic: a lock held in one transaction makes the other connection skip that row.
            let a = try tdb.connect()
            let b = try tdb.connect()
            defer {
                a.close()
                b.close()
            }
            let claim = "SELECT id FROM q WHERE state = 'queued' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1"
            try a.transaction {
                let first = try a.execute(claim).int(0, "id")
                let second = try b.execute(claim).int(0, "id")
                #expect(first == 1)
                #expect(second == 2)
            }

            // Two threads claiming until the queue is empty.
            let claimed = Mutex<[Int: [Int64]]>([:])
            let failures = Mutex<[String]>([])
            let done = DispatchGroup()
            for (worker, conn) in [a, b].enumerated() {
                done.enter()
                let thread = Thread {
                    defer { done.leave() }
                    do {
                        var mine = [Int64]()
                        while true {
                            let r = try conn.execute(
                                """
                                UPDATE q SET state = 'taken', taken_by = $1
                                WHERE id = (SELECT id FROM q WHERE state = 'queued'
                                            ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
                                RETURNING id
                                """, [.int(Int64(worker))])
                            guard let id = r.isEmpty ? nil : r.int(0, "id") else { break }
                            mine.append(id)
                        }
                        claimed.withLock { $0[worker] = mine }
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }
                thread.start()
            }
            done.wait()
            #expect(failures.withLock { $0 } == [])
            let all = claimed.withLock { $0 }
            let ids0 = all[0] ?? [], ids1 = all[1] ?? []
            #expect(Set(ids0).isDisjoint(with: Set(ids1)))
            #expect(ids0.count + ids1.count == 600)
            #expect(Set(ids0).union(ids1) == Set(1...600))
            let byDB = try setup.execute("SELECT taken_by, count(*) AS n FROM q GROUP BY taken_by ORDER BY taken_by")
            #expect(byDB.rowCount <= 2)
        }
    }

    @Test func quoteIdentifier() throws {
        try withDB { db, _ in
            let plain = try db.quoteIdentifier("plain")
            let weird = try db.quoteIdentifier("we\"ird")
            #expect(plain == "\"plain\"")
            #expect(weird == "\"we\"\"ird\"")
        }
    }
}
