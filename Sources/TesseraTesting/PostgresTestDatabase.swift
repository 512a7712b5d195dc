import Foundation
import LibPQ
import TesseraStore

/// A throwaway database on the test cluster named by `TESSERA_TEST_DATABASE_URL` (test support only; libraries
/// never read the environment).
///
/// ```swift
/// @Suite(.enabled(if: PostgresTestDatabase.isAvailable)) struct StoreTests {
///     @Test func insert() throws {
///         let tdb = try PostgresTestDatabase.create(migrate: true)
///         defer { tdb.drop() }
///         let db = try tdb.connect()
///         defer { db.close() }
///         ...
///     }
/// }
/// ```
/// `ops/pg start DIR` prints a suitable URL; `ops/test` exports it.
public struct PostgresTestDatabase: Sendable {
    /// `TESSERA_TEST_DATABASE_URL`: a conninfo or URL of a role that may CREATE DATABASE (the admin database).
    public static var adminURL: String? {
        guard let url = ProcessInfo.processInfo.environment["TESSERA_TEST_DATABASE_URL"], !url.isEmpty else {
            return nil
        }
        return url
    }

    /// Whether database tests can run (the URL is set). A set URL with a dead server makes tests fail, not skip.
    public static var isAvailable: Bool { adminURL != nil }

    /// The repository's `migrations/` directory, found from this source file's real path.
    public static var repositoryMigrationsDirectory: String {
        let here = URL(fileURLWithPath: #filePath).resolvingSymlinksInPath()
        return here.deletingLastPathComponent()  // TesseraTesting
            .deletingLastPathComponent()  // Sources
            .deletingLastPathComponent()  // repo root
            .appendingPathComponent("migrations").path
    }

    /// The new database's name, `tessera_t_<random>`.
    public let name: String
    /// Connection string for the new database (same form as the admin URL).
    public let url: String
    private let adminURL: String

    /// Creates a fresh, empty database; with `migrate`, applies every migration of the repository's `migrations/`.
    public static func create(migrate: Bool) throws -> PostgresTestDatabase {
        guard let admin = adminURL else {
            throw PGError(code: .connectionFailed, message: "TESSERA_TEST_DATABASE_URL is not set")
        }
        let name = "tessera_t_" + String(UInt64.random(in: 0...UInt64.max), radix: 36)
        let db = try PGConnection(admin)
        defer { db.close() }
        try db.execute("CREATE DATABASE \(try db.quoteIdentifier(name))")
        let tdb = PostgresTestDatabase(name: name, url: withDatabaseName(admin, name), adminURL: admin)
        if migrate {
            do {
                let migrator = try Migrator(directory: repositoryMigrationsDirectory)
                let conn = try tdb.connect()
                defer { conn.close() }
                try migrator.migrateUp(conn)
            } catch {
                tdb.drop()
                throw error
            }
        }
        return tdb
    }

    /// Creates a database, runs `body`, and drops the database whether `body` throws or not.
    public static func with<T>(migrate: Bool, _ body: (PostgresTestDatabase) throws -> T) throws -> T {
        let tdb = try create(migrate: migrate)
        defer { tdb.drop() }
        return try body(tdb)
    }

    /// A new connection to this database; close it when done.
    public func connect() throws -> PGConnection { try PGConnection(url) }

    /// Drops the database, disconnecting anyone still connected. Never throws (best effort, for `defer`).
    public func drop() {
        guard let db = try? PGConnection(adminURL) else { return }
        defer { db.close() }
        if let quoted = try? db.quoteIdentifier(name) {
            _ = try? db.execute("DROP DATABASE IF EXISTS \(quoted) WITH (FORCE)")
        }
    }
}

/// `url` with its database replaced by `name`: the path of a `postgres://` URL, or a `dbname=` appended to a
/// conninfo (a later keyword wins in libpq conninfo strings).
func withDatabaseName(_ url: String, _ name: String) -> String {
    for scheme in ["postgresql://", "postgres://"] where url.hasPrefix(scheme) {
        let rest = url.dropFirst(scheme.count)
        let queryStart = rest.firstIndex(of: "?") ?? rest.endIndex
        let authorityAndPath = rest[..<queryStart]
        let query = rest[queryStart...]
        let authority = authorityAndPath.firstIndex(of: "/").map { authorityAndPath[..<$0] } ?? authorityAndPath
        var q = String(query)
        // Drop a dbname= query parameter, which would override the path.
        if q.hasPrefix("?") {
            let kept = q.dropFirst().split(separator: "&").filter { !$0.hasPrefix("dbname=") }
            q = kept.isEmpty ? "" : "?" + kept.joined(separator: "&")
        }
        return scheme + authority + "/" + name + q
    }
    return url + " dbname=" + name
}
