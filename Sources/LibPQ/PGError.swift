/// The one error type of the LibPQ module.
///
/// `description` is deliberately short: the code, the server's primary message and the SQLSTATE. It never
/// contains the SQL text, bind values or the connection string. `debugDescription` adds the server's DETAIL
/// and HINT and the query text, for logs at debug level and for tests.
public struct PGError: Error, CustomStringConvertible, CustomDebugStringConvertible {
    /// What kind of failure this is. A struct over a private enum, so codes can be added without breaking callers.
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: String, Hashable, Sendable {
            case connectionFailed, connectionLost, queryFailed, badResult, copyFailed, closed, invalidParameter
        }
        private let base: Base
        private init(_ base: Base) { self.base = base }

        /// The connection could not be established (bad URL, server down, auth failure).
        public static let connectionFailed = Code(.connectionFailed)
        /// An established connection broke during a call (server restart, network); reconnect.
        public static let connectionLost = Code(.connectionLost)
        /// The server rejected a statement; `sqlState` says why.
        public static let queryFailed = Code(.queryFailed)
        /// The server answered with something this wrapper does not handle (e.g. `COPY` through `execute`).
        public static let badResult = Code(.badResult)
        /// `COPY ... FROM STDIN` failed while sending or at the end.
        public static let copyFailed = Code(.copyFailed)
        /// The connection was used after `close()`.
        public static let closed = Code(.closed)
        /// A value cannot be sent (e.g. a string with a NUL character, a COPY row of the wrong width).
        public static let invalidParameter = Code(.invalidParameter)

        public var description: String { base.rawValue }
    }

    public var code: Code
    /// The server's primary message (or libpq's, for connection errors), without a trailing newline.
    public var message: String
    /// The SQLSTATE the server sent, if any.
    public var sqlState: SQLState?
    /// The server's DETAIL field (may contain row values; only in `debugDescription`).
    public var detail: String?
    /// The server's HINT field.
    public var hint: String?
    /// The constraint the error is about (`PG_DIAG_CONSTRAINT_NAME`), e.g. for unique violations.
    public var constraint: String?
    /// The SQL text that failed (only in `debugDescription`).
    public var query: String?

    public init(
        code: Code, message: String, sqlState: SQLState? = nil, detail: String? = nil, hint: String? = nil,
        constraint: String? = nil, query: String? = nil
    ) {
        self.code = code
        self.message = message
        self.sqlState = sqlState
        self.detail = detail
        self.hint = hint
        self.constraint = constraint
        self.query = query
    }

    public var description: String {
        var s = "PGError.\(code): \(message)"
        if let sqlState { s += " (SQLSTATE \(sqlState))" }
        return s
    }

    public var debugDescription: String {
        var s = description
        if let constraint { s += "\n  constraint: \(constraint)" }
        if let detail { s += "\n  detail: \(detail)" }
        if let hint { s += "\n  hint: \(hint)" }
        if let query { s += "\n  query: \(query)" }
        return s
    }
}
