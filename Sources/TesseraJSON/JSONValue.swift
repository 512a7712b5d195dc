// Tessera's one JSON vocabulary: a value with an exact round trip for doubles and integers, ordered objects, a parser
// with a strict mode (safetensors headers), and a Codable bridge (`JSONValueEncoder`/`JSONValueDecoder`).
//
// Why not Foundation's JSONSerialization: it lost precision on 11 of 64 doubles in MACHINE.md §5, and our merged
// results must be bitwise reproducible through PostgreSQL (JSONB stores numbers as exact decimals) and the wire.
// Numbers are written with Swift's shortest round-trip representation and parsed with `Double(String)`, which is
// correctly rounded, so `parse(render(x)) == x` bit for bit for every finite double. Objects keep insertion order.
// A leaf module with no dependency (not even Foundation), so that TesseraCompute can read its safetensors headers
// with it and every layer above shares one codec.

public enum JSONValue: Sendable, Hashable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// A number rendered in Tessera's shortest form (integral values without a fraction: `1`, `0.5`, `1e-05`).
    public static func number(_ d: Double) -> JSONValue { .number(JSONNumber(d)) }

    /// An integer as its double, rendered as today's stored JSON has it (`1e+15` from 10^15 on, rounded beyond
    /// 2^53); `.number(JSONNumber(exactly:))` keeps every digit.
    public static func int(_ v: Int) -> JSONValue { .number(Double(v)) }
}

/// A JSON number: the nearest double, plus, when there is one, the exact decimal text it came from.
///
/// The text (`literal`) is kept where a double alone would lose something: by the strict parser for every number (so
/// a reader can tell `8` from `8.0` or `8e0`), by every parse for integer literals from ±2^53 on (which a double
/// cannot hold exactly), by `init(exactly:)` for integers from 10^15 on (so they render as digits), and by
/// `init(_:spelling:)`. Rendering writes the literal verbatim when there is one, otherwise the double's shortest form.
///
/// Equality is by exact value: an integer literal compares as that integer (up to 128 bits), anything else as its
/// double. So `1`, `1.0` and `.number(1)` are equal, while 2^64 - 1 and 2^64, which round to the same double, are not.
public struct JSONNumber: Sendable, Hashable, CustomStringConvertible {
    /// The number as the nearest double.
    public let value: Double
    /// The exact decimal text, when kept (see the type's documentation).
    public let literal: String?

    public init(_ value: Double) {
        self.value = value
        literal = nil
    }

    /// How a double is spelled when rendered.
    public enum Spelling: Sendable {
        /// Tessera's default: integral values without a fraction part (`1`, `-0.0`, `0.5`, `1e-05`).
        case shortest
        /// Swift's `description`: the shortest round-trip text, always with a fraction part or exponent (`1.0`,
        /// `0.5`, `1e-05`, `1e+16`). The sampling results have always been written this way.
        case swiftDescription
    }

    /// `value` rendered with `spelling` (non-finite values still render as `null`).
    public init(_ value: Double, spelling: Spelling) {
        self.value = value
        literal = spelling == .swiftDescription && value.isFinite ? value.description : nil
    }

    /// An integer, exact at any size and always rendered as plain digits: from 10^15 on (where the shortest form
    /// of a double switches to an exponent) it keeps its decimal digits.
    public init<I: BinaryInteger>(exactly integer: I) {
        value = Double(integer)
        literal = integer.magnitude >= 1_000_000_000_000_000 ? String(integer) : nil
    }

    /// A parsed number with its literal (the parser has checked that `literal` spells `value`).
    init(value: Double, literal: String?) {
        self.value = value
        self.literal = literal
    }

    /// 2^53: every integer of at most this magnitude is exactly a double.
    static let maxExactDoubleInteger: UInt64 = 1 << 53

    /// Whether `literal` is an integer literal: an optional minus sign and digits, no fraction or exponent.
    public var isIntegerLiteral: Bool {
        guard let literal else { return false }
        let digits = literal.utf8.first == UInt8(ascii: "-") ? literal.utf8.dropFirst() : literal.utf8[...]
        return !digits.isEmpty && digits.allSatisfy { $0 >= 0x30 && $0 <= 0x39 }
    }

    /// The number when its literal is a plain unsigned decimal integer (digits only: no sign, fraction or
    /// exponent) that fits 64 bits; nil otherwise, and always nil without a literal. This is the safetensors rule
    /// for shapes and offsets, which the strict parser's literals make checkable.
    public var unsignedIntegerLiteral: UInt64? {
        guard let literal, isIntegerLiteral, literal.utf8.first != UInt8(ascii: "-") else { return nil }
        return UInt64(literal)
    }

    /// The exact integer value, when the number is one that fits 128 bits.
    public var exactInteger: Int128? {
        if isIntegerLiteral, let literal { return Int128(literal) }
        return Int128(exactly: value)
    }

    /// The number as a `T`, when it is an integer that `T` holds exactly.
    public func integer<T: FixedWidthInteger>(as: T.Type = T.self) -> T? {
        // A double above 2^53 may already be rounded: only a literal tells its exact value.
        if literal == nil, value.magnitude > Double(JSONNumber.maxExactDoubleInteger) { return nil }
        return exactInteger.flatMap { T(exactly: $0) }
    }

    public var description: String { literal ?? JSONValue.formatNumber(value) }

    public static func == (a: JSONNumber, b: JSONNumber) -> Bool {
        guard a.value == b.value else { return false }
        // Equal doubles below 2^53 are equal values; from there on, an integer literal may be more exact than either.
        if a.literal == nil && b.literal == nil || a.value.magnitude < Double(maxExactDoubleInteger) { return true }
        return a.exactInteger == b.exactInteger
    }

    // Equal numbers have equal doubles, so hashing the double is consistent with `==`.
    public func hash(into h: inout Hasher) { h.combine(value) }
}

/// An ordered JSON object (keys unique; insertion order kept for readable, stable output).
public struct JSONObject: Sendable, Hashable, ExpressibleByDictionaryLiteral {
    public private(set) var pairs: [(key: String, value: JSONValue)] = []

    public init() {}
    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        for (k, v) in elements { self[k] = v }
    }
    public init(_ pairs: [(String, JSONValue)]) {
        for (k, v) in pairs { self[k] = v }
    }

    public var keys: [String] { pairs.map(\.key) }
    public var isEmpty: Bool { pairs.isEmpty }

    public subscript(key: String) -> JSONValue? {
        get { pairs.first(where: { $0.key == key })?.value }
        set {
            if let i = pairs.firstIndex(where: { $0.key == key }) {
                if let newValue { pairs[i].value = newValue } else { pairs.remove(at: i) }
            } else if let newValue {
                pairs.append((key, newValue))
            }
        }
    }

    /// Appends a pair whose key the caller knows is new (the parser and encoder check with a set, which keeps large
    /// objects linear to build).
    mutating func appendNew(_ key: String, _ value: JSONValue) { pairs.append((key, value)) }

    public static func == (a: JSONObject, b: JSONObject) -> Bool {
        a.pairs.count == b.pairs.count && zip(a.pairs, b.pairs).allSatisfy { $0.key == $1.key && $0.value == $1.value }
    }
    public func hash(into h: inout Hasher) {
        for p in pairs {
            h.combine(p.key)
            h.combine(p.value)
        }
    }
}

// MARK: - Accessors

extension JSONValue {
    public var objectValue: JSONObject? { if case .object(let o) = self { return o } else { return nil } }
    public var arrayValue: [JSONValue]? { if case .array(let a) = self { return a } else { return nil } }
    public var stringValue: String? { if case .string(let s) = self { return s } else { return nil } }
    public var numberValue: JSONNumber? { if case .number(let n) = self { return n } else { return nil } }
    public var doubleValue: Double? { if case .number(let n) = self { return n.value } else { return nil } }
    public var boolValue: Bool? { if case .bool(let b) = self { return b } else { return nil } }
    public var isNull: Bool { if case .null = self { return true } else { return false } }
    /// The number as an integer when it is one exactly (at most 2^53 in magnitude, as a double holds every such
    /// integer; `int64Value` and `uint64Value` read larger integer literals exactly).
    public var intValue: Int? {
        guard case .number(let n) = self, n.value.isFinite, n.value == n.value.rounded(),
            abs(n.value) <= Double(JSONNumber.maxExactDoubleInteger)
        else { return nil }
        return Int(n.value)
    }
    /// The number as an Int64 when it is an integer in range, exactly (from its literal beyond 2^53).
    public var int64Value: Int64? { numberValue?.integer(as: Int64.self) }
    /// The number as a UInt64 when it is a non-negative integer in range, exactly (from its literal beyond 2^53).
    public var uint64Value: UInt64? { numberValue?.integer(as: UInt64.self) }
    public subscript(key: String) -> JSONValue? { objectValue?[key] }
}
