import Foundation
import LibPQ

/// One numbered schema change: `NNNN_name.up.sql` and its inverse `NNNN_name.down.sql`.
public struct Migration: Sendable, Hashable {
    public let version: Int
    public let name: String
    public let up: String
    public let down: String

    public init(version: Int, name: String, up: String, down: String) {
        self.version = version
        self.name = name
        self.up = up
        self.down = down
    }

    /// `0001_init`
    public var fileStem: String { Migration.stem(version: version, name: name) }

    static func stem(version: Int, name: String) -> String {
        let digits = String(version)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits + "_" + name
    }
}

/// Why migrations could not be read or applied, or why the database schema does not fit this build.
public struct MigrationError: Error, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case directoryNotFound, unreadableFile, badFileName, missingDown, missingUp, duplicateVersion, gap
            case noMigrations, unknownTarget, migrationFailed, schemaBehind, schemaAhead
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }
        public static let directoryNotFound = Code(.directoryNotFound)
        public static let unreadableFile = Code(.unreadableFile)
        /// A `.sql` file whose name is not `NNNN_name.up.sql` / `NNNN_name.down.sql`.
        public static let badFileName = Code(.badFileName)
        public static let missingDown = Code(.missingDown)
        public static let missingUp = Code(.missingUp)
        /// Two migrations share a version number (different names).
        public static let duplicateVersion = Code(.duplicateVersion)
        /// Versions are not 1, 2, 3, ... without holes.
        public static let gap = Code(.gap)
        public static let noMigrations = Code(.noMigrations)
        /// A `to:` version outside 0...latestVersion.
        public static let unknownTarget = Code(.unknownTarget)
        /// A migration's SQL failed; `underlying` is the `PGError`. Nothing of that migration was applied.
        public static let migrationFailed = Code(.migrationFailed)
        /// The database is behind this build: run `tessera migrate`.
        public static let schemaBehind = Code(.schemaBehind)
        /// The database is ahead of this build (a newer tessera migrated it).
        public static let schemaAhead = Code(.schemaAhead)
        public var description: String { base.rawValue }
    }

    public var code: Code
    public var message: String
    public var underlying: (any Error)?

    public init(code: Code, message: String, underlying: (any Error)? = nil) {
        self.code = code
        self.message = message
        self.underlying = underlying
    }

    public var description: String {
        guard let underlying else { return message }
        return "\(message): \(underlying)"
    }
}

/// Applies the numbered SQL files of `migrations/` and records them in `tessera_schema_version`.
///
/// Each migration runs in its own transaction together with its version row, under a transaction-scoped advisory
/// lock, so two migrators racing on one database apply each migration exactly once. Migration files must not
/// contain BEGIN/COMMIT (or statements that cannot run in a transaction, such as CREATE INDEX CONCURRENTLY), and
/// must not touch `tessera_schema_version`, which belongs to the migrator.
public struct Migrator: Sendable {
    /// The table recording applied versions.
    public static let versionTable = "tessera_schema_version"
    /// `pg_advisory_xact_lock` key held while migrating (ASCII "tessmigr").
    public static let advisoryLockKey: Int64 = 0x7465_7373_6D69_6772

    /// Where the migrations came from: a directory, or "built into this executable".
    public let directory: String
    public let migrations: [Migration]

    public var latestVersion: Int { migrations.last?.version ?? 0 }

    /// Reads every `NNNN_name.up.sql` / `NNNN_name.down.sql` pair in `directory`. Versions must run 1, 2, 3, ...
    /// and every up needs its down. Other files (README, etc.) are ignored; a misnamed `.sql` file is an error.
    public init(directory: String) throws {
        var isDir: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDir), isDir.boolValue else {
            throw MigrationError(code: .directoryNotFound, message: "migrations directory not found: \(directory)")
        }
        let files: [String]
        do {
            files = try FileManager.default.contentsOfDirectory(atPath: directory).sorted()
        } catch {
            throw MigrationError(
                code: .directoryNotFound, message: "cannot list migrations directory \(directory)", underlying: error)
        }
        var texts: [(file: String, sql: String)] = []
        for file in files where file.hasSuffix(".sql") {
            let path = (directory as NSString).appendingPathComponent(file)
            do {
                texts.append((file, try String(contentsOfFile: path, encoding: .utf8)))
            } catch {
                throw MigrationError(code: .unreadableFile, message: "cannot read \(path)", underlying: error)
            }
        }
        try self.init(files: texts, source: directory)
    }

    /// The migrations built into this executable (Sources/TesseraStore/EmbeddedMigrations.swift, generated from
    /// migrations/ by `ops/embed-migrations`; a unit test keeps the two identical), so a copied or installed binary
    /// needs no migrations directory.
    public static func builtIn() throws -> Migrator {
        try Migrator(files: EmbeddedMigrations.files, source: "built into this executable")
    }

    /// The migrations of `files` (name `NNNN_name.up.sql` / `.down.sql` and its SQL); `source` names where they came
    /// from in messages and in `directory`.
    public init(files: [(file: String, sql: String)], source directory: String) throws {
        struct Parts { var name: String; var up: String?; var down: String? }
        var byVersion = [Int: Parts]()
        for (file, sql) in files.sorted(by: { $0.file < $1.file }) {
            guard let (version, name, direction) = Migrator.parseFileName(file) else {
                throw MigrationError(
                    code: .badFileName,
                    message: "\(directory)/\(file): migration files are named NNNN_name.up.sql and NNNN_name.down.sql")
            }
            var parts = byVersion[version] ?? Parts(name: name)
            if parts.name != name {
                throw MigrationError(
                    code: .duplicateVersion,
                    message: "\(directory): version \(version) is used by both \"\(parts.name)\" and \"\(name)\"")
            }
            if direction == "up" { parts.up = sql } else { parts.down = sql }
            byVersion[version] = parts
        }
        var migrations = [Migration]()
        for (expected, version) in byVersion.keys.sorted().enumerated() {
            let parts = byVersion[version]!
            let stem = Migration.stem(version: version, name: parts.name)
            guard version == expected + 1 else {
                throw MigrationError(
                    code: .gap,
                    message: "\(directory): migration versions must be 1, 2, 3, ... without gaps; found \(stem) where version \(expected + 1) was expected")
            }
            guard let up = parts.up else {
                throw MigrationError(code: .missingUp, message: "\(directory)/\(stem).down.sql has no \(stem).up.sql")
            }
            guard let down = parts.down else {
                throw MigrationError(
                    code: .missingDown, message: "\(directory)/\(stem).up.sql has no \(stem).down.sql")
            }
            migrations.append(Migration(version: version, name: parts.name, up: up, down: down))
        }
        guard !migrations.isEmpty else {
            throw MigrationError(code: .noMigrations, message: "no migrations (NNNN_name.up.sql) in \(directory)")
        }
        self.directory = directory
        self.migrations = migrations
    }

    /// `0012_add_index.up.sql` → (12, "add_index", "up").
    static func parseFileName(_ file: String) -> (Int, String, String)? {
        let direction: String
        let stem: Substring
        if file.hasSuffix(".up.sql") {
            direction = "up"
            stem = file.dropLast(".up.sql".count)
        } else if file.hasSuffix(".down.sql") {
            direction = "down"
            stem = file.dropLast(".down.sql".count)
        } else {
            return nil
        }
        guard let underscore = stem.firstIndex(of: "_") else { return nil }
        let digits = stem[..<underscore]
        let name = stem[stem.index(after: underscore)...]
        guard digits.count >= 4, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let version = Int(digits),
            version > 0, !name.isEmpty,
            name.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || $0 == "_" || $0 == "-") })
        else { return nil }
        return (version, String(name), direction)
    }

    // MARK: - Applying

    /// The highest applied version; 0 when the version table does not exist (a fresh database).
    public func currentVersion(_ db: PGConnection) throws -> Int {
        let exists = try db.execute("SELECT to_regclass($1) IS NOT NULL AS present", [.text(Migrator.versionTable)])
        guard exists.bool(0, "present") == true else { return 0 }
        let r = try db.execute("SELECT coalesce(max(version), 0) AS v FROM \(Migrator.versionTable)")
        return Int(r.int(0, "v") ?? 0)
    }

    /// Applies pending migrations up to `target` (default: the latest), each in its own transaction. Returns the
    /// migrations this call applied (none if the database was already there, e.g. another migrator got first).
    @discardableResult
    public func migrateUp(_ db: PGConnection, to target: Int? = nil) throws -> [Migration] {
        let target = target ?? latestVersion
        guard (0...latestVersion).contains(target) else {
            throw MigrationError(
                code: .unknownTarget, message: "no migration \(target): this build has versions 1...\(latestVersion)")
        }
        var applied = [Migration]()
        while true {
            let step: Migration? = try db.transaction {
                try lock(db)
                try db.execute(
                    """
                    CREATE TABLE IF NOT EXISTS \(Migrator.versionTable) (
                        version    integer PRIMARY KEY,
                        name       text NOT NULL,
                        applied_at timestamptz NOT NULL DEFAULT now()
                    )
                    """)
                let current = try currentVersion(db)
                if current > latestVersion { throw aheadError(current) }
                guard current < target else { return nil }
                let m = migrations[current]
                do {
                    try db.executeScript(m.up)
                } catch {
                    throw MigrationError(
                        code: .migrationFailed, message: "migration \(m.fileStem).up.sql failed", underlying: error)
                }
                try db.execute(
                    "INSERT INTO \(Migrator.versionTable) (version, name) VALUES ($1, $2)",
                    [.int(Int64(m.version)), .text(m.name)])
                return m
            }
            guard let step else { return applied }
            applied.append(step)
        }
    }

    /// Reverts applied migrations down to `target` (0 reverts all), newest first, each in its own transaction.
    /// Returns the migrations reverted, in the order they were reverted.
    @discardableResult
    public func migrateDown(_ db: PGConnection, to target: Int) throws -> [Migration] {
        guard (0...latestVersion).contains(target) else {
            throw MigrationError(
                code: .unknownTarget, message: "no migration \(target): this build has versions 0...\(latestVersion)")
        }
        var reverted = [Migration]()
        while true {
            let step: Migration? = try db.transaction {
                try lock(db)
                let current = try currentVersion(db)
                if current > latestVersion { throw aheadError(current) }
                guard current > target else { return nil }
                let m = migrations[current - 1]
                do {
                    try db.executeScript(m.down)
                } catch {
                    throw MigrationError(
                        code: .migrationFailed, message: "migration \(m.fileStem).down.sql failed", underlying: error)
                }
                try db.execute("DELETE FROM \(Migrator.versionTable) WHERE version = $1", [.int(Int64(m.version))])
                return m
            }
            guard let step else { return reverted }
            reverted.append(step)
        }
    }

    /// Throws `.schemaBehind` (naming `tessera migrate`) or `.schemaAhead` unless the database is at `latestVersion`.
    public func requireCurrent(_ db: PGConnection) throws {
        let current = try currentVersion(db)
        if current < latestVersion {
            throw MigrationError(
                code: .schemaBehind,
                message: "database schema is at version \(current), this build needs \(latestVersion): run `tessera migrate --database-url URL`")
        }
        if current > latestVersion { throw aheadError(current) }
    }

    private func aheadError(_ current: Int) -> MigrationError {
        MigrationError(
            code: .schemaAhead,
            message: "database schema is at version \(current), newer than this build (which knows versions up to \(latestVersion)): upgrade tessera")
    }

    private func lock(_ db: PGConnection) throws {
        try db.execute("SELECT pg_advisory_xact_lock($1)", [.int(Migrator.advisoryLockKey)])
    }
}
