internal import CLibPQ
import Synchronization

/// One PostgreSQL connection (libpq, blocking).
///
/// **Thread safety.** libpq connections are not thread-safe. A `PGConnection` must be used by one thread at a time;
/// in practice it is created by, or handed to, the thread (or pool lease) that owns it and used only there. It is
/// `@unchecked Sendable` so it can be handed over, which is sound because nothing in it is touched concurrently
/// under that rule. Never call it from async code on the cooperative pool; run it on a dedicated thread.
///
/// **Lifetime.** `close()` frees the libpq handle and is idempotent; every use after it throws `PGError.closed`.
/// Close every connection you open: `deinit` asserts that it was closed (debug builds) and only as a last resort
/// frees it (release builds).
///
/// All values are sent as binds (`$1`, `$2`, ...) through `PQexecParams`; SQL is never built from values.
public final class PGConnection: @unchecked Sendable {
    private var conn: OpaquePointer?
    /// Set when a call failed in a way that means the session is gone even though libpq may still report
    /// CONNECTION_OK (`sessionLost`): the next call would fail the same way.
    private var broken = false
    private var savepointDepth = 0
    /// Server-side prepared statements by (SQL text, parameter type OIDs): each statement is parsed and planned once
    /// per connection, not on every call. The set is bounded by the statements the program contains.
    private var prepared: [PreparedKey: String] = [:]

    private struct PreparedKey: Hashable {
        var sql: String
        var types: [Oid]
    }
    /// Set while a libpq call sequence runs; catches use from two threads at once (a programmer error).
    private let busy = Atomic<Bool>(false)

    /// Connects with a libpq conninfo string (`host=/tmp/x port=5432 user=postgres dbname=postgres`) or a URL
    /// (`postgresql://user@host:port/db?host=/socket/dir`). Sets the client encoding to UTF-8, `client_min_messages`
    /// to `warning`, and silences libpq's notice printing. Throws `.connectionFailed`; the half-open handle is
    /// freed either way. Add `connect_timeout=N` to the conninfo to bound the wait (default here: 10 s).
    public init(_ conninfoOrURL: String) throws {
        // Keywords before `dbname` are defaults the conninfo may override; those after it override the conninfo.
        let keys = ["connect_timeout", "fallback_application_name", "dbname", "client_encoding"]
        let values = ["10", "tessera", conninfoOrURL, "UTF8"]
        let handle = withCStringArray(keys) { k in
            withCStringArray(values) { v in PQconnectdbParams(k, v, 1) }
        }
        guard let handle else {
            throw PGError(code: .connectionFailed, message: "libpq could not allocate a connection")
        }
        guard PQstatus(handle) == CONNECTION_OK else {
            let message = PGConnection.trimmed(PQerrorMessage(handle))
            PQfinish(handle)
            throw PGError(code: .connectionFailed, message: message.isEmpty ? "connection failed" : message)
        }
        PQsetNoticeProcessor(handle, { _, _ in }, nil)
        self.conn = handle
        do {
            try executeScript("SET client_min_messages TO warning")
        } catch {
            close()
            throw PGError(code: .connectionFailed, message: (error as? PGError)?.message ?? "\(error)")
        }
    }

    deinit {
        assert(conn == nil, "PGConnection deinitialized while open: call close()")
        if let conn { PQfinish(conn) }
    }

    /// True until `close()`, and while the connection is good: false after the server went away, whether libpq
    /// noticed (CONNECTION_BAD) or a call failed with an error that ends the session (`sessionLost`).
    public var isOpen: Bool {
        guard let conn, !broken else { return false }
        return PQstatus(conn) == CONNECTION_OK
    }

    /// Whether an error ends the session: libpq says the connection is bad; the server sent a connection-exception
    /// (class 08) or shutdown/crash SQLSTATE (57P01 admin shutdown, 57P02 crash shutdown, 57P03 cannot connect now;
    /// an immediate restart sends these, and libpq may still report CONNECTION_OK); or no SQLSTATE came and libpq
    /// reports the socket gone ("server closed the connection unexpectedly", "no connection to the server", ...).
    static func sessionLost(status: ConnStatusType, sqlState: SQLState?, message: String) -> Bool {
        if status == CONNECTION_BAD { return true }
        if let sqlState { return sqlState.errorClass == "08" || ["57P01", "57P02", "57P03"].contains(sqlState.code) }
        let m = message.lowercased()
        return ["server closed the connection", "no connection to the server", "could not receive data from server",
                "could not send data to server", "terminating connection", "connection to server was lost"]
            .contains { m.contains($0) }
    }

    /// Frees the connection. Idempotent.
    public func close() {
        exclusive {
            if let conn {
                PQfinish(conn)
                self.conn = nil
            }
        }
    }

    /// The server version as an integer, e.g. 150018 for 15.18.
    public var serverVersion: Int {
        guard let conn else { return 0 }
        return Int(PQserverVersion(conn))
    }

    /// The process id of the server backend serving this connection.
    public var backendPID: Int32 {
        guard let conn else { return 0 }
        return PQbackendPID(conn)
    }

    /// Whether a transaction block is open (including a failed one awaiting ROLLBACK).
    public var inTransaction: Bool {
        guard let conn else { return false }
        let s = PQtransactionStatus(conn)
        return s == PQTRANS_INTRANS || s == PQTRANS_INERROR || s == PQTRANS_ACTIVE
    }

    /// Runs `body` while marking the connection busy; traps if another thread is inside one at the same time.
    func exclusive<R>(_ body: () throws -> R) rethrows -> R {
        guard busy.compareExchange(expected: false, desired: true, ordering: .acquiring).exchanged else {
            preconditionFailure("PGConnection used from two threads at once; a connection belongs to one thread")
        }
        defer { busy.store(false, ordering: .releasing) }
        return try body()
    }

    func handle() throws -> OpaquePointer {
        guard let conn else { throw PGError(code: .closed, message: "connection is closed") }
        return conn
    }

    // MARK: - Statements

    /// Runs one statement with `$1, $2, ...` bound to `params` (text format, see `PGValue`), and returns its rows.
    @discardableResult
    public func execute(_ sql: String, _ params: [PGValue] = []) throws -> PGResult {
        try exclusive { try executeUnguarded(sql, params) }
    }

    private func executeUnguarded(_ sql: String, _ params: [PGValue]) throws -> PGResult {
        let h = try handle()
        var cParams = [UnsafeMutablePointer<CChar>?]()
        cParams.reserveCapacity(params.count)
        defer { for p in cParams { p?.deallocate() } }
        for (i, p) in params.enumerated() {
            guard let text = p.textRepresentation else {
                cParams.append(nil)
                continue
            }
            guard !text.utf8.contains(0) else {
                throw PGError(
                    code: .invalidParameter, message: "parameter $\(i + 1) contains a NUL character", query: sql)
            }
            cParams.append(PGConnection.makeCString(text))
        }
        let types = params.map { Oid($0.typeOID) }
        if params.isEmpty {
            return try consume(sql.withCString { PQexecParams(h, $0, 0, nil, nil, nil, nil, 0) }, query: sql, on: h)
        }
        let name = try preparedName(sql, types: types, on: h)
        let result: OpaquePointer? = name.withCString { cName in
            cParams.withUnsafeBufferPointer { valuesBuf in
                valuesBuf.withMemoryRebound(to: UnsafePointer<CChar>?.self) { values in
                    PQexecPrepared(h, cName, Int32(params.count), values.baseAddress, nil, nil, 0)
                }
            }
        }
        return try consume(result, query: sql, on: h)
    }

    /// The name of `sql` prepared with these parameter types on this connection, preparing it on first use.
    private func preparedName(_ sql: String, types: [Oid], on h: OpaquePointer) throws -> String {
        let key = PreparedKey(sql: sql, types: types)
        if let name = prepared[key] { return name }
        let name = "tessera_ps_\(prepared.count + 1)"
        let result: OpaquePointer? = name.withCString { cName in
            sql.withCString { cSQL in
                types.withUnsafeBufferPointer { PQprepare(h, cName, cSQL, Int32(types.count), $0.baseAddress) }
            }
        }
        _ = try consume(result, query: sql, on: h)
        prepared[key] = name
        return name
    }

    /// Runs a script of one or more `;`-separated statements without parameters (`PQexec`), e.g. a migration file.
    /// Unless the script itself contains BEGIN/COMMIT, PostgreSQL runs it as one implicit transaction.
    public func executeScript(_ sql: String) throws {
        try exclusive {
            let h = try handle()
            let result = PQexec(h, sql)
            _ = try consume(result, query: sql, on: h)
        }
    }

    /// Checks a result, copies it out and frees it.
    private func consume(_ result: OpaquePointer?, query: String, on h: OpaquePointer) throws -> PGResult {
        guard let result else {
            throw connectionError(h, query: query)
        }
        defer { PQclear(result) }
        let status = PQresultStatus(result)
        switch status {
        case PGRES_COMMAND_OK, PGRES_TUPLES_OK, PGRES_EMPTY_QUERY:
            return PGConnection.copyOut(result)
        case PGRES_COPY_IN:
            _ = PQputCopyEnd(h, "COPY FROM STDIN is not supported by execute(); use copyIn()")
            drainResults(h)
            throw PGError(code: .badResult, message: "COPY FROM STDIN is not supported by execute(); use copyIn()",
                          query: query)
        case PGRES_COPY_OUT:
            var buffer: UnsafeMutablePointer<CChar>? = nil
            while PQgetCopyData(h, &buffer, 0) > 0 {
                PQfreemem(buffer)
                buffer = nil
            }
            drainResults(h)
            throw PGError(code: .badResult, message: "COPY TO STDOUT is not supported by execute()", query: query)
        default:
            throw resultError(result, on: h, query: query)
        }
    }

    private func drainResults(_ h: OpaquePointer) {
        while let r = PQgetResult(h) { PQclear(r) }
    }

    func connectionError(_ h: OpaquePointer, query: String?) -> PGError {
        let message = PGConnection.trimmed(PQerrorMessage(h))
        let lost = Self.sessionLost(status: PQstatus(h), sqlState: nil, message: message)
        if lost { broken = true }
        return PGError(
            code: lost ? .connectionLost : .queryFailed, message: message.isEmpty ? "query failed" : message,
            query: query)
    }

    private func resultError(_ result: OpaquePointer, on h: OpaquePointer, query: String?) -> PGError {
        func field(_ c: Character) -> String? {
            guard let p = PQresultErrorField(result, Int32(c.asciiValue!)) else { return nil }
            return String(cString: p)
        }
        let sqlState = field("C").map { SQLState($0) }
        var message = field("M") ?? PGConnection.trimmed(PQresultErrorMessage(result))
        if message.isEmpty { message = PGConnection.trimmed(PQerrorMessage(h)) }
        let lost = Self.sessionLost(status: PQstatus(h), sqlState: sqlState, message: message)
        if lost { broken = true }
        return PGError(
            code: lost ? .connectionLost : .queryFailed,
            message: message.isEmpty ? "query failed" : message, sqlState: sqlState, detail: field("D"),
            hint: field("H"), constraint: field("n"), query: query)
    }

    private static func copyOut(_ result: OpaquePointer) -> PGResult {
        let rows = Int(PQntuples(result))
        let cols = Int(PQnfields(result))
        var names = [String]()
        names.reserveCapacity(cols)
        for c in 0..<cols { names.append(PQfname(result, Int32(c)).map { String(cString: $0) } ?? "?column?") }
        var cells = [String?]()
        cells.reserveCapacity(rows * cols)
        for r in 0..<rows {
            for c in 0..<cols {
                if PQgetisnull(result, Int32(r), Int32(c)) != 0 {
                    cells.append(nil)
                } else {
                    let p = PQgetvalue(result, Int32(r), Int32(c))!
                    let n = Int(PQgetlength(result, Int32(r), Int32(c)))
                    cells.append(
                        p.withMemoryRebound(to: UInt8.self, capacity: n) {
                            String(decoding: UnsafeBufferPointer(start: $0, count: n), as: UTF8.self)
                        })
                }
            }
        }
        let tag = PQcmdStatus(result).map { String(cString: $0) } ?? ""
        let affected = PQcmdTuples(result).flatMap { Int(String(cString: $0)) } ?? 0
        return PGResult(rowCount: rows, columnNames: names, affectedRows: affected, commandTag: tag, cells: cells)
    }

    // MARK: - Transactions

    /// Runs `body` inside BEGIN/COMMIT; on a throw, rolls back and rethrows. Nested calls use savepoints.
    /// A COMMIT that fails (e.g. a serialization failure) throws; the transaction is then rolled back by the server.
    @discardableResult
    public func transaction<T>(_ body: () throws -> T) throws -> T {
        let h = try handle()
        if PQtransactionStatus(h) == PQTRANS_IDLE {
            try execute("BEGIN")
            let value: T
            do {
                value = try body()
            } catch {
                if self.conn != nil { _ = try? execute("ROLLBACK") }
                throw error
            }
            try execute("COMMIT")
            return value
        }
        savepointDepth += 1
        defer { savepointDepth -= 1 }
        let name = "tessera_sp_\(savepointDepth)"
        try execute("SAVEPOINT \(name)")
        let value: T
        do {
            value = try body()
        } catch {
            if self.conn != nil { _ = try? execute("ROLLBACK TO SAVEPOINT \(name)") }
            throw error
        }
        try execute("RELEASE SAVEPOINT \(name)")
        return value
    }

    // MARK: - COPY

    /// Bulk-loads `rows` with `COPY table (columns) FROM STDIN` in text format. Identifiers are quoted with
    /// `PQescapeIdentifier` (pass `schema` for a schema-qualified table); values are escaped for the text format.
    /// Returns the number of rows the server reports. Each row must have `columns.count` values (or, with no
    /// columns given, one per table column).
    @discardableResult
    public func copyIn(table: String, schema: String? = nil, columns: [String], rows: [[PGValue]]) throws -> Int {
        let h = try handle()
        var target = try quoteIdentifier(table)
        if let schema { target = try quoteIdentifier(schema) + "." + target }
        let columnList = try columns.isEmpty ? "" : " (" + columns.map(quoteIdentifier).joined(separator: ", ") + ")"
        let sql = "COPY \(target)\(columnList) FROM STDIN"
        return try exclusive { try copyInUnguarded(h, sql: sql, columns: columns, rows: rows) }
    }

    private func copyInUnguarded(_ h: OpaquePointer, sql: String, columns: [String], rows: [[PGValue]]) throws -> Int {

        guard let start = PQexec(h, sql) else { throw connectionError(h, query: sql) }
        let startStatus = PQresultStatus(start)
        guard startStatus == PGRES_COPY_IN else {
            defer { PQclear(start) }
            if startStatus == PGRES_FATAL_ERROR || startStatus == PGRES_NONFATAL_ERROR {
                var e = resultError(start, on: h, query: sql)
                e.code = .copyFailed
                throw e
            }
            throw PGError(code: .copyFailed, message: "server did not enter COPY IN mode", query: sql)
        }
        PQclear(start)

        var buffer = [UInt8]()
        buffer.reserveCapacity(1 << 16)
        var failure: PGError?
        func flush() -> Bool {
            guard !buffer.isEmpty else { return true }
            let ok = buffer.withUnsafeBufferPointer { b in
                b.withMemoryRebound(to: CChar.self) { PQputCopyData(h, $0.baseAddress, Int32($0.count)) }
            }
            buffer.removeAll(keepingCapacity: true)
            return ok == 1
        }
        rowLoop: for (r, row) in rows.enumerated() {
            if !columns.isEmpty && row.count != columns.count {
                failure = PGError(
                    code: .invalidParameter,
                    message: "COPY row \(r) has \(row.count) values, expected \(columns.count)", query: sql)
                break
            }
            for (c, value) in row.enumerated() {
                if c > 0 { buffer.append(UInt8(ascii: "\t")) }
                guard let text = value.textRepresentation else {
                    buffer.append(UInt8(ascii: "\\"))
                    buffer.append(UInt8(ascii: "N"))
                    continue
                }
                for byte in text.utf8 {
                    switch byte {
                    case UInt8(ascii: "\\"): buffer.append(byte); buffer.append(byte)
                    case UInt8(ascii: "\n"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "n"))
                    case UInt8(ascii: "\r"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "r"))
                    case UInt8(ascii: "\t"): buffer.append(UInt8(ascii: "\\")); buffer.append(UInt8(ascii: "t"))
                    case 0:
                        failure = PGError(
                            code: .invalidParameter, message: "COPY row \(r) column \(c) contains a NUL character",
                            query: sql)
                        break rowLoop
                    default: buffer.append(byte)
                    }
                }
            }
            buffer.append(UInt8(ascii: "\n"))
            if buffer.count >= 1 << 16, !flush() { break }
        }
        if failure == nil && !flush() {
            failure = PGError(code: .copyFailed, message: PGConnection.trimmed(PQerrorMessage(h)), query: sql)
        }
        if let failure {
            _ = PQputCopyEnd(h, failure.message)
            drainResults(h)
            throw failure
        }
        guard PQputCopyEnd(h, nil) == 1 else {
            let e = PGError(code: .copyFailed, message: PGConnection.trimmed(PQerrorMessage(h)), query: sql)
            drainResults(h)
            throw e
        }
        var count = 0
        var error: PGError?
        while let r = PQgetResult(h) {
            let s = PQresultStatus(r)
            if s == PGRES_COMMAND_OK {
                count = PQcmdTuples(r).flatMap { Int(String(cString: $0)) } ?? rows.count
            } else if error == nil {
                var e = resultError(r, on: h, query: sql)
                e.code = .copyFailed
                error = e
            }
            PQclear(r)
        }
        if let error { throw error }
        return count
    }

    // MARK: - Helpers

    /// Quotes an identifier (table, column, channel name) with `PQescapeIdentifier`, e.g. `"my table"`.
    public func quoteIdentifier(_ name: String) throws -> String {
        try exclusive { try quoteIdentifierUnguarded(name) }
    }

    private func quoteIdentifierUnguarded(_ name: String) throws -> String {
        let h = try handle()
        let utf8 = Array(name.utf8)
        guard !utf8.contains(0) else {
            throw PGError(code: .invalidParameter, message: "identifier contains a NUL character")
        }
        let escaped = utf8.withUnsafeBufferPointer { b in
            b.withMemoryRebound(to: CChar.self) { PQescapeIdentifier(h, $0.baseAddress, $0.count) }
        }
        guard let escaped else {
            throw PGError(code: .invalidParameter, message: PGConnection.trimmed(PQerrorMessage(h)))
        }
        defer { PQfreemem(escaped) }
        return String(cString: escaped)
    }

    static func trimmed(_ p: UnsafePointer<CChar>?) -> String {
        guard let p else { return "" }
        var s = Substring(String(cString: p))
        while let last = s.last, last.isWhitespace { s.removeLast() }
        return String(s)
    }

    static func makeCString(_ s: String) -> UnsafeMutablePointer<CChar> {
        let utf8 = s.utf8
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: utf8.count + 1)
        var i = 0
        for b in utf8 {
            p[i] = CChar(bitPattern: b)
            i += 1
        }
        p[i] = 0
        return p
    }
}

/// Calls `body` with a NULL-terminated array of C strings that live for the duration of the call.
private func withCStringArray<R>(_ strings: [String], _ body: (UnsafePointer<UnsafePointer<CChar>?>) -> R) -> R {
    let owned = strings.map(PGConnection.makeCString)
    defer { for p in owned { p.deallocate() } }
    var pointers: [UnsafePointer<CChar>?] = owned.map { UnsafePointer($0) }
    pointers.append(nil)
    return pointers.withUnsafeBufferPointer { body($0.baseAddress!) }
}
