import Foundation
import LibPQ
import Synchronization
import TesseraStore
import TesseraTesting
import Testing

/// A temporary migrations directory with the given files (name → SQL); removed by `remove()`.
private struct TempMigrations {
    let path: String
    init(_ files: [String: String]) throws {
        path = FileManager.default.temporaryDirectory
            .appendingPathComponent("tessera-migrations-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for (name, sql) in files {
            try sql.write(toFile: (path as NSString).appendingPathComponent(name), atomically: true, encoding: .utf8)
        }
    }
    func remove() { try? FileManager.default.removeItem(atPath: path) }
}

private let twoMigrations = [
    "0001_widgets.up.sql": "CREATE TABLE widget (id bigint PRIMARY KEY, name text NOT NULL);\nCREATE INDEX widget_name ON widget (name);",
    "0001_widgets.down.sql": "DROP TABLE widget;",
    "0002_gadgets.up.sql": "CREATE TYPE gadget_state AS ENUM ('new', 'old');\nCREATE TABLE gadget (id bigint PRIMARY KEY, state gadget_state NOT NULL DEFAULT 'new');",
    "0002_gadgets.down.sql": "DROP TABLE gadget;\nDROP TYPE gadget_state;",
    "README.md": "not a migration",
]

private func expectMigrationError(
    _ code: MigrationError.Code, sourceLocation: SourceLocation = #_sourceLocation, _ body: () throws -> Void
) -> MigrationError? {
    do {
        try body()
        Issue.record("expected MigrationError.\(code), nothing thrown", sourceLocation: sourceLocation)
    } catch let e as MigrationError {
        #expect(e.code == code, "\(e)", sourceLocation: sourceLocation)
        return e
    } catch {
        Issue.record("expected MigrationError.\(code), got \(error)", sourceLocation: sourceLocation)
    }
    return nil
}

private func tableExists(_ db: PGConnection, _ name: String) throws -> Bool {
    try db.execute("SELECT to_regclass($1) IS NOT NULL AS e", [.text(name)]).bool(0, "e") == true
}

@Suite struct MigratorDirectoryTests {
    @Test func readsPairsInOrder() throws {
        let dir = try TempMigrations(twoMigrations)
        defer { dir.remove() }
        let m = try Migrator(directory: dir.path)
        #expect(m.migrations.map(\.version) == [1, 2])
        #expect(m.migrations.map(\.name) == ["widgets", "gadgets"])
        #expect(m.migrations[0].fileStem == "0001_widgets")
        #expect(m.migrations[1].down.contains("DROP TYPE"))
        #expect(m.latestVersion == 2)
    }

    @Test(arguments: [
        (["0001_a.up.sql": "SELECT 1"], MigrationError.Code.missingDown),
        (["0001_a.down.sql": "SELECT 1"], .missingUp),
        (["0001_a.up.sql": "", "0001_a.down.sql": "", "0001_b.up.sql": "", "0001_b.down.sql": ""], .duplicateVersion),
        (["0001_a.up.sql": "", "0001_a.down.sql": "", "0003_c.up.sql": "", "0003_c.down.sql": ""], .gap),
        (["0002_b.up.sql": "", "0002_b.down.sql": ""], .gap),
        (["1_a.up.sql": "", "1_a.down.sql": ""], .badFileName),
        (["0001_a.sql": ""], .badFileName),
        (["0001_a b.up.sql": "", "0001_a b.down.sql": ""], .badFileName),
        (["notes.txt": ""], .noMigrations),
    ])
    func rejectsBadDirectories(files: [String: String], code: MigrationError.Code) throws {
        let dir = try TempMigrations(files)
        defer { dir.remove() }
        let e = expectMigrationError(code) { _ = try Migrator(directory: dir.path) }
        #expect(e?.description.contains(dir.path) == true)
    }

    @Test func missingDirectory() {
        _ = expectMigrationError(.directoryNotFound) { _ = try Migrator(directory: "/nonexistent/tessera/migrations") }
    }

    @Test func builtInMigrationsAreTheRepositorysMigrations() throws {
        // The binary carries migrations/ (EmbeddedMigrations.swift, from ops/embed-migrations): byte for byte the same
        // versions, names and SQL, or a copied binary would build another schema than the source tree's.
        let builtIn = try Migrator.builtIn()
        let repository = try Migrator(directory: PostgresTestDatabase.repositoryMigrationsDirectory)
        #expect(builtIn.migrations.map(\.fileStem) == repository.migrations.map(\.fileStem), "run ops/embed-migrations")
        let differing = zip(builtIn.migrations, repository.migrations).filter { $0 != $1 }.map(\.0.fileStem)
        #expect(differing.isEmpty, "built-in SQL differs from migrations/ for \(differing): run ops/embed-migrations")
        #expect(builtIn.latestVersion == repository.latestVersion && builtIn.latestVersion >= 4)
    }
}

@Suite(.enabled(if: PostgresTestDatabase.isAvailable, "set TESSERA_TEST_DATABASE_URL (ops/pg start DIR)"))
struct MigratorDatabaseTests {
    @Test func upDownUp() throws {
        let dir = try TempMigrations(twoMigrations)
        defer { dir.remove() }
        let migrator = try Migrator(directory: dir.path)
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let db = try tdb.connect()
            defer { db.close() }
            #expect(try migrator.currentVersion(db) == 0)
            let behind = expectMigrationError(.schemaBehind) { try migrator.requireCurrent(db) }
            #expect(
                behind?.description
                    == "database schema is at version 0, this build needs 2: run `tessera migrate --database-url URL`")

            #expect(try migrator.migrateUp(db, to: 1).map(\.version) == [1])
            #expect(try migrator.currentVersion(db) == 1)
            #expect(try tableExists(db, "widget"))
            #expect(try !tableExists(db, "gadget"))
            _ = expectMigrationError(.schemaBehind) { try migrator.requireCurrent(db) }

            #expect(try migrator.migrateUp(db).map(\.version) == [2])
            #expect(try migrator.migrateUp(db).isEmpty)
            try migrator.requireCurrent(db)
            let rows = try db.execute("SELECT version, name, applied_at FROM tessera_schema_version ORDER BY version")
            #expect(rows.rowCount == 2)
            #expect(rows[1, "name"] == "gadgets")
            #expect(rows[0, "applied_at"] != nil)

            #expect(try migrator.migrateDown(db, to: 0).map(\.version) == [2, 1])
            #expect(try migrator.currentVersion(db) == 0)
            #expect(try !tableExists(db, "widget"))
            #expect(try migrator.migrateUp(db).count == 2)
            #expect(try migrator.migrateDown(db, to: 1).map(\.version) == [1 + 1])
            #expect(try migrator.migrateDown(db, to: 1).isEmpty)
            _ = expectMigrationError(.unknownTarget) { try migrator.migrateUp(db, to: 3) }
            _ = expectMigrationError(.unknownTarget) { try migrator.migrateDown(db, to: -1) }
        }
    }

    @Test func failedMigrationLeavesNothingBehind() throws {
        var files = twoMigrations
        files["0002_gadgets.up.sql"] = "CREATE TABLE gadget (id int);\nSELECT no_such_column FROM gadget;"
        let dir = try TempMigrations(files)
        defer { dir.remove() }
        let migrator = try Migrator(directory: dir.path)
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let db = try tdb.connect()
            defer { db.close() }
            let e = expectMigrationError(.migrationFailed) { try migrator.migrateUp(db) }
            #expect(e?.description.contains("0002_gadgets.up.sql") == true)
            #expect((e?.underlying as? PGError)?.sqlState == .undefinedColumn)
            #expect(try migrator.currentVersion(db) == 1)
            #expect(try tableExists(db, "widget"))
            #expect(try !tableExists(db, "gadget"))
            #expect(!db.inTransaction)
        }
    }

    @Test func databaseAheadOfBuild() throws {
        let full = try TempMigrations(twoMigrations)
        let old = try TempMigrations(twoMigrations.filter { $0.key.hasPrefix("0001") })
        defer {
            full.remove()
            old.remove()
        }
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let db = try tdb.connect()
            defer { db.close() }
            try Migrator(directory: full.path).migrateUp(db)
            let oldMigrator = try Migrator(directory: old.path)
            let e = expectMigrationError(.schemaAhead) { try oldMigrator.requireCurrent(db) }
            #expect(e?.description.contains("newer than this build") == true)
            _ = expectMigrationError(.schemaAhead) { try oldMigrator.migrateUp(db) }
            _ = expectMigrationError(.schemaAhead) { try oldMigrator.migrateDown(db, to: 0) }
        }
    }

    @Test func concurrentMigratorsApplyEachMigrationOnce() throws {
        var files = twoMigrations
        files["0001_widgets.up.sql"] = "SELECT pg_sleep(0.2);\n" + files["0001_widgets.up.sql"]!
        let dir = try TempMigrations(files)
        defer { dir.remove() }
        let migrator = try Migrator(directory: dir.path)
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let applied = Mutex<[Int]>([])
            let failures = Mutex<[String]>([])
            let group = DispatchGroup()
            for _ in 0..<2 {
                group.enter()
                Thread {
                    defer { group.leave() }
                    do {
                        let db = try tdb.connect()
                        defer { db.close() }
                        let mine = try migrator.migrateUp(db).map(\.version)
                        applied.withLock { $0 += mine }
                    } catch {
                        failures.withLock { $0.append("\(error)") }
                    }
                }.start()
            }
            group.wait()
            #expect(failures.withLock { $0 } == [])
            #expect(applied.withLock { $0.sorted() } == [1, 2])
            let db = try tdb.connect()
            defer { db.close() }
            #expect(try db.execute("SELECT count(*) AS n FROM tessera_schema_version").int(0, "n") == 2)
        }
    }

    /// `PostgresTestDatabase.create(migrate: true)` leaves a database that the build accepts.
    @Test func testDatabaseCreatesMigrated() throws {
        let path = PostgresTestDatabase.repositoryMigrationsDirectory
        guard FileManager.default.fileExists(atPath: path) else { return }
        try PostgresTestDatabase.with(migrate: true) { tdb in
            let db = try tdb.connect()
            defer { db.close() }
            try Migrator(directory: path).requireCurrent(db)
        }
    }

    /// The repository's real migrations: every up has a down, and up → down → up works on an empty database,
    /// with down leaving nothing behind.
    @Test func repositoryMigrationsRoundTrip() throws {
        let path = PostgresTestDatabase.repositoryMigrationsDirectory
        let files = (try? FileManager.default.contentsOfDirectory(atPath: path)) ?? []
        let ups = files.filter { $0.hasSuffix(".up.sql") }
        guard !ups.isEmpty else { return }  // migrations/ not written yet
        for up in ups {
            let down = String(up.dropLast(".up.sql".count)) + ".down.sql"
            #expect(files.contains(down), "\(up) has no \(down)")
        }
        let migrator = try Migrator(directory: path)
        try PostgresTestDatabase.with(migrate: false) { tdb in
            let db = try tdb.connect()
            defer { db.close() }
            let leftovers = """
                SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                  AND c.relname NOT LIKE 'tessera\\_schema\\_version%'
                UNION ALL
                SELECT t.typname FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')
                  AND t.typtype IN ('e', 'd', 'r', 'm')
                UNION ALL
                SELECT p.proname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                ORDER BY 1
                """
            #expect(try migrator.migrateUp(db).count == migrator.latestVersion)
            try migrator.requireCurrent(db)
            #expect(try migrator.migrateDown(db, to: 0).count == migrator.latestVersion)
            let left = try db.execute(leftovers)
            #expect(left.rowCount == 0, "down migrations left behind: \((0..<left.rowCount).map { left[$0, 0]! })")
            #expect(try migrator.migrateUp(db).count == migrator.latestVersion)
            try migrator.requireCurrent(db)
        }
    }
}
