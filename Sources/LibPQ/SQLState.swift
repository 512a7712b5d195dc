/// A PostgreSQL SQLSTATE: the five-character error code from the server (`PG_DIAG_SQLSTATE`).
///
/// An open set: any code the server sends is kept as is, and the constants below name the ones Tessera
/// reacts to. Compare with `==` or `switch` on the constants (or on string literals: `case "23505":`).
public struct SQLState: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// The five-character code, e.g. `"23505"`.
    public let code: String

    public init(_ code: String) { self.code = code }
    public init(stringLiteral value: String) { self.code = value }

    public var description: String { code }

    /// The two-character class, e.g. `"23"` (integrity constraint violation).
    public var errorClass: String { String(code.prefix(2)) }

    /// Class 23: unique, foreign key, check, not-null or exclusion violation.
    public var isIntegrityConstraintViolation: Bool { errorClass == "23" }

    /// Errors after which running the same transaction again may succeed (serialization failure, deadlock).
    public var isTransactionRetryable: Bool { self == .serializationFailure || self == .deadlockDetected }

    // Class 08: connection exception
    public static let connectionException: SQLState = "08000"
    public static let connectionFailure: SQLState = "08006"
    // Class 22: data exception
    public static let stringDataRightTruncation: SQLState = "22001"
    public static let numericValueOutOfRange: SQLState = "22003"
    public static let invalidDatetimeFormat: SQLState = "22007"
    public static let divisionByZero: SQLState = "22012"
    public static let invalidParameterValue: SQLState = "22023"
    public static let invalidTextRepresentation: SQLState = "22P02"
    // Class 23: integrity constraint violation
    public static let notNullViolation: SQLState = "23502"
    public static let foreignKeyViolation: SQLState = "23503"
    public static let uniqueViolation: SQLState = "23505"
    public static let checkViolation: SQLState = "23514"
    public static let exclusionViolation: SQLState = "23P01"
    // Class 25 / 40: transaction state and rollback
    public static let inFailedSQLTransaction: SQLState = "25P02"
    public static let serializationFailure: SQLState = "40001"
    public static let deadlockDetected: SQLState = "40P01"
    // Class 3D / 42: names and syntax
    public static let invalidCatalogName: SQLState = "3D000"
    public static let syntaxError: SQLState = "42601"
    public static let insufficientPrivilege: SQLState = "42501"
    public static let undefinedColumn: SQLState = "42703"
    public static let undefinedFunction: SQLState = "42883"
    public static let undefinedTable: SQLState = "42P01"
    public static let undefinedObject: SQLState = "42704"
    public static let duplicateDatabase: SQLState = "42P04"
    public static let duplicateTable: SQLState = "42P07"
    public static let duplicateObject: SQLState = "42710"
    public static let datatypeMismatch: SQLState = "42804"
    // Class 55 / 57: object state, operator intervention
    public static let lockNotAvailable: SQLState = "55P03"
    public static let objectInUse: SQLState = "55006"
    public static let queryCanceled: SQLState = "57014"
    public static let adminShutdown: SQLState = "57P01"
    public static let crashShutdown: SQLState = "57P02"
    public static let cannotConnectNow: SQLState = "57P03"
    // Class P0: PL/pgSQL
    public static let raiseException: SQLState = "P0001"
}
