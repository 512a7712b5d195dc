/// A value bound to a `$n` placeholder or sent in a `COPY` row.
///
/// Everything travels in PostgreSQL's text format. Integers are sent as `bigint`, doubles as `double precision`
/// in their shortest exact form (so they round-trip bit for bit; `NaN`, `Infinity`, `-Infinity` as PostgreSQL
/// spells them), booleans as `boolean`, bytes as `bytea` (hex, `\x…`). Text and JSON are sent with an unspecified
/// type, so the server infers it from context (a `text` column, a `timestamptz` column, a `jsonb` column). Where the
/// context gives no type (`SELECT $1`), cast in SQL: `$1::int`, `$1::jsonb`.
public enum PGValue: Sendable, Hashable {
    case null
    case text(String)
    case int(Int64)
    case double(Double)
    case bool(Bool)
    case bytea([UInt8])
    /// A JSON document (already encoded). Sent untyped, so it fits `json` and `jsonb` columns alike.
    case json(String)
}

extension PGValue: ExpressibleByStringLiteral, ExpressibleByIntegerLiteral, ExpressibleByFloatLiteral,
    ExpressibleByBooleanLiteral, ExpressibleByNilLiteral
{
    public init(stringLiteral value: String) { self = .text(value) }
    public init(integerLiteral value: Int64) { self = .int(value) }
    public init(floatLiteral value: Double) { self = .double(value) }
    public init(booleanLiteral value: Bool) { self = .bool(value) }
    public init(nilLiteral: ()) { self = .null }
}

extension PGValue {
    /// `.int` from any integer type; traps if it does not fit in `Int64` (a programmer error).
    public init(_ value: some BinaryInteger) {
        guard let v = Int64(exactly: value) else { preconditionFailure("integer \(value) does not fit in Int64") }
        self = .int(v)
    }
    public init(_ value: Double) { self = .double(value) }
    public init(_ value: String) { self = .text(value) }
    public init(_ value: Bool) { self = .bool(value) }
    public init(_ value: [UInt8]) { self = .bytea(value) }

    /// `.null` for `nil`, otherwise the wrapped value's `PGValue`.
    public init<T: PGValueConvertible>(_ value: T?) {
        self = value.map(\.pgValue) ?? .null
    }

    public var isNull: Bool { if case .null = self { true } else { false } }
}

/// Types that have a natural `PGValue`, so `PGValue(optionalThing)` works.
public protocol PGValueConvertible {
    var pgValue: PGValue { get }
}
extension Int: PGValueConvertible { public var pgValue: PGValue { .int(Int64(self)) } }
extension Int64: PGValueConvertible { public var pgValue: PGValue { .int(self) } }
extension Int32: PGValueConvertible { public var pgValue: PGValue { .int(Int64(self)) } }
extension Double: PGValueConvertible { public var pgValue: PGValue { .double(self) } }
extension String: PGValueConvertible { public var pgValue: PGValue { .text(self) } }
extension Bool: PGValueConvertible { public var pgValue: PGValue { .bool(self) } }
extension Array: PGValueConvertible where Element == UInt8 { public var pgValue: PGValue { .bytea(self) } }
extension PGValue: PGValueConvertible { public var pgValue: PGValue { self } }

// MARK: - Text format

extension PGValue {
    /// PostgreSQL's text representation, or nil for NULL.
    var textRepresentation: String? {
        switch self {
        case .null: return nil
        case .text(let s), .json(let s): return s
        case .int(let i): return String(i)
        case .double(let d): return PGValue.formatDouble(d)
        case .bool(let b): return b ? "t" : "f"
        case .bytea(let bytes): return PGValue.hexBytea(bytes)
        }
    }

    /// Type OID sent with a bind: 0 lets the server infer (text, json), otherwise the fixed type.
    var typeOID: UInt32 {
        switch self {
        case .null, .text, .json: return 0
        case .int: return 20  // int8
        case .double: return 701  // float8
        case .bool: return 16  // bool
        case .bytea: return 17  // bytea
        }
    }

    /// Swift's `description` of a Double is the shortest string that parses back to the same bits (`5e-324`,
    /// `-0.0`, `0.1`); PostgreSQL 12+ `float8in` parses all of these exactly.
    static func formatDouble(_ d: Double) -> String {
        if d.isNaN { return "NaN" }
        if d.isInfinite { return d < 0 ? "-Infinity" : "Infinity" }
        return d.description
    }

    static func parseDouble(_ s: String) -> Double? {
        switch s {
        case "NaN": return .nan
        case "Infinity": return .infinity
        case "-Infinity": return -.infinity
        default: return Double(s)
        }
    }

    static func hexBytea(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out = [UInt8]()
        out.reserveCapacity(2 + bytes.count * 2)
        out.append(UInt8(ascii: "\\"))
        out.append(UInt8(ascii: "x"))
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Parses PostgreSQL's hex bytea output (`\x0aff…`). Returns nil for anything else.
    static func parseHexBytea(_ s: String) -> [UInt8]? {
        let u = Array(s.utf8)
        guard u.count >= 2, u[0] == UInt8(ascii: "\\"), u[1] == UInt8(ascii: "x"), u.count % 2 == 0 else { return nil }
        func nibble(_ c: UInt8) -> UInt8? {
            switch c {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): return c - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): return c - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): return c - UInt8(ascii: "A") + 10
            default: return nil
            }
        }
        var out = [UInt8]()
        out.reserveCapacity((u.count - 2) / 2)
        var i = 2
        while i < u.count {
            guard let hi = nibble(u[i]), let lo = nibble(u[i + 1]) else { return nil }
            out.append(hi << 4 | lo)
            i += 2
        }
        return out
    }
}
