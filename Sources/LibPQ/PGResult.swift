/// The outcome of one statement, copied out of libpq's `PGresult` (which is freed at once), so it is a plain value.
///
/// Cells are PostgreSQL's text format; the typed accessors parse them. A column name that does not exist is a
/// programmer error and traps with the list of columns; a NULL cell or a value that does not parse gives nil.
public struct PGResult: Sendable {
    /// Number of rows returned (0 for statements that return none).
    public var rowCount: Int
    /// Column names, in order.
    public var columnNames: [String]
    /// Rows affected by INSERT/UPDATE/DELETE/MERGE/COPY/SELECT (libpq `PQcmdTuples`); 0 when not reported.
    public var affectedRows: Int
    /// The command tag, e.g. `"INSERT 0 3"`, `"UPDATE 1"`, `"SELECT 2"`.
    public var commandTag: String

    /// Row-major cells, `rowCount * columnNames.count` long.
    var cells: [String?]
    var columnIndex: [String: Int]

    init(rowCount: Int, columnNames: [String], affectedRows: Int, commandTag: String, cells: [String?]) {
        self.rowCount = rowCount
        self.columnNames = columnNames
        self.affectedRows = affectedRows
        self.commandTag = commandTag
        self.cells = cells
        var index = [String: Int]()
        for (i, name) in columnNames.enumerated() where index[name] == nil { index[name] = i }
        self.columnIndex = index
    }

    public var isEmpty: Bool { rowCount == 0 }
    public var columnCount: Int { columnNames.count }

    /// The index of a column by name (the first one, if several share the name).
    public func columnIndex(_ name: String) -> Int? { columnIndex[name] }

    private func index(_ name: String) -> Int {
        guard let i = columnIndex[name] else {
            preconditionFailure("PGResult has no column \"\(name)\"; columns: \(columnNames)")
        }
        return i
    }

    /// The cell as text, nil for NULL.
    public subscript(row: Int, column: Int) -> String? {
        precondition(row >= 0 && row < rowCount, "row \(row) out of range 0..<\(rowCount)")
        precondition(column >= 0 && column < columnNames.count, "column \(column) out of range 0..<\(columnNames.count)")
        return cells[row * columnNames.count + column]
    }

    /// The cell as text, nil for NULL.
    public subscript(row: Int, column: String) -> String? { self[row, index(column)] }

    public func string(_ row: Int, _ column: String) -> String? { self[row, column] }
    public func string(_ row: Int, _ column: Int) -> String? { self[row, column] }

    public func int(_ row: Int, _ column: String) -> Int64? { int(row, index(column)) }
    public func int(_ row: Int, _ column: Int) -> Int64? { self[row, column].flatMap { Int64($0) } }

    /// `double precision` / `real` / `numeric` cells; `NaN`, `Infinity`, `-Infinity` included. Exact for float8.
    public func double(_ row: Int, _ column: String) -> Double? { double(row, index(column)) }
    public func double(_ row: Int, _ column: Int) -> Double? { self[row, column].flatMap(PGValue.parseDouble) }

    public func bool(_ row: Int, _ column: String) -> Bool? { bool(row, index(column)) }
    public func bool(_ row: Int, _ column: Int) -> Bool? {
        switch self[row, column] {
        case "t", "true": true
        case "f", "false": false
        default: nil
        }
    }

    /// `bytea` cells in hex output format (the server default since 9.0).
    public func bytea(_ row: Int, _ column: String) -> [UInt8]? { bytea(row, index(column)) }
    public func bytea(_ row: Int, _ column: Int) -> [UInt8]? { self[row, column].flatMap(PGValue.parseHexBytea) }

    /// Whether the cell is NULL.
    public func isNull(_ row: Int, _ column: String) -> Bool { self[row, column] == nil }

    /// The rows, each as `[column name: text]`; NULL cells are absent. For tests and small results.
    public var rowDictionaries: [[String: String]] {
        (0..<rowCount).map { r in
            var d = [String: String]()
            for (c, name) in columnNames.enumerated() { if let v = self[r, c] { d[name] = v } }
            return d
        }
    }
}
