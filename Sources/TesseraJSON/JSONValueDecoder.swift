// JSONValue → Decodable, the inverse of `JSONValueEncoder`.

/// Decodes `Decodable` values from `JSONValue`.
///
/// - Integers must be whole numbers the target type holds exactly (a literal beyond ±2^53 is read from its digits).
/// - Doubles read the number's double; `null` reads as NaN, because Tessera writes non-finite numbers as `null`.
/// - A `JSONValue` inside the type receives the value as it is.
/// - Every failure is a `DecodingError` whose coding path and debug description name the field
///   (`JSONValueDecoder.message(for:)` turns one into a sentence such as "start: expected a whole number, found
///   \"a\"").
public struct JSONValueDecoder: Sendable {
    public init() {}

    public func decode<T: Decodable>(_ type: T.Type = T.self, from value: JSONValue) throws -> T {
        try ValueDecoder(value: value, codingPath: []).decodeValue(T.self)
    }

    /// "`path`: what went wrong" for any error a decode threw (the path is left out at the top level).
    public static func message(for error: any Error) -> String {
        guard let e = error as? DecodingError else { return "\(error)" }
        let (path, text): ([any CodingKey], String)
        switch e {
        case .typeMismatch(_, let c), .valueNotFound(_, let c), .dataCorrupted(let c): (path, text) = (c.codingPath, c.debugDescription)
        case .keyNotFound(let key, let c): (path, text) = (c.codingPath + [key], "missing")
        @unknown default: return "\(e)"
        }
        let where_ = JSONCodingPath.text(path)
        return where_.isEmpty ? text : "\(where_): \(text)"
    }
}

/// A short, bounded rendering of a value for error messages.
private func found(_ v: JSONValue) -> String {
    let text = v.render()
    return text.count <= 80 ? text : String(text.prefix(77)) + "..."
}

private struct ValueDecoder: Decoder {
    let value: JSONValue
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func decodeValue<T: Decodable>(_ type: T.Type) throws -> T {
        if T.self == JSONValue.self { return value as! T }
        return try T(from: self)
    }

    func container<Key: CodingKey>(keyedBy type: Key.Type) throws -> KeyedDecodingContainer<Key> {
        guard case .object(let o) = value else {
            throw DecodingError.typeMismatch(
                JSONObject.self, .init(codingPath: codingPath, debugDescription: "expected an object, found \(found(value))"))
        }
        return KeyedDecodingContainer(KeyedDecoder<Key>(object: o, codingPath: codingPath))
    }

    func unkeyedContainer() throws -> any UnkeyedDecodingContainer {
        guard case .array(let a) = value else {
            throw DecodingError.typeMismatch(
                [JSONValue].self, .init(codingPath: codingPath, debugDescription: "expected an array, found \(found(value))"))
        }
        return UnkeyedDecoder(items: a, codingPath: codingPath)
    }

    func singleValueContainer() throws -> any SingleValueDecodingContainer { SingleDecoder(value: value, codingPath: codingPath) }
}

/// The scalar rules, shared by all three container kinds.
private enum Scalar {
    static func bool(_ v: JSONValue, _ path: [any CodingKey]) throws -> Bool {
        guard case .bool(let b) = v else { throw mismatch(Bool.self, "true or false", v, path) }
        return b
    }

    static func string(_ v: JSONValue, _ path: [any CodingKey]) throws -> String {
        guard case .string(let s) = v else { throw mismatch(String.self, "a string", v, path) }
        return s
    }

    static func double(_ v: JSONValue, _ path: [any CodingKey]) throws -> Double {
        switch v {
        case .number(let n): return n.value
        case .null: return .nan
        default: throw mismatch(Double.self, "a number", v, path)
        }
    }

    static func integer<T: FixedWidthInteger>(_ v: JSONValue, _ path: [any CodingKey]) throws -> T {
        guard case .number(let n) = v else { throw mismatch(T.self, "a whole number", v, path) }
        guard let i = n.integer(as: T.self) else {
            throw DecodingError.dataCorrupted(
                .init(codingPath: path, debugDescription: "expected a whole number that fits \(T.self), found \(found(v))"))
        }
        return i
    }

    static func mismatch(_ type: Any.Type, _ expected: String, _ v: JSONValue, _ path: [any CodingKey]) -> DecodingError {
        if case .null = v {
            return .valueNotFound(type, .init(codingPath: path, debugDescription: "expected \(expected), found null"))
        }
        return .typeMismatch(type, .init(codingPath: path, debugDescription: "expected \(expected), found \(found(v))"))
    }
}

private struct KeyedDecoder<Key: CodingKey>: KeyedDecodingContainerProtocol {
    let object: JSONObject
    let codingPath: [any CodingKey]

    var allKeys: [Key] { object.keys.compactMap { Key(stringValue: $0) } }
    func contains(_ key: Key) -> Bool { object[key.stringValue] != nil }

    private func value(_ key: Key) throws -> JSONValue {
        guard let v = object[key.stringValue] else {
            throw DecodingError.keyNotFound(key, .init(codingPath: codingPath, debugDescription: "missing"))
        }
        return v
    }
    private func path(_ key: Key) -> [any CodingKey] { codingPath + [key] }

    func decodeNil(forKey key: Key) throws -> Bool { try value(key).isNull }
    func decode(_ type: Bool.Type, forKey key: Key) throws -> Bool { try Scalar.bool(value(key), path(key)) }
    func decode(_ type: String.Type, forKey key: Key) throws -> String { try Scalar.string(value(key), path(key)) }
    func decode(_ type: Double.Type, forKey key: Key) throws -> Double { try Scalar.double(value(key), path(key)) }
    func decode(_ type: Float.Type, forKey key: Key) throws -> Float { Float(try Scalar.double(value(key), path(key))) }
    func decode(_ type: Int.Type, forKey key: Key) throws -> Int { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int8.Type, forKey key: Key) throws -> Int8 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int16.Type, forKey key: Key) throws -> Int16 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int32.Type, forKey key: Key) throws -> Int32 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: Int64.Type, forKey key: Key) throws -> Int64 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt.Type, forKey key: Key) throws -> UInt { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt8.Type, forKey key: Key) throws -> UInt8 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt16.Type, forKey key: Key) throws -> UInt16 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt32.Type, forKey key: Key) throws -> UInt32 { try Scalar.integer(value(key), path(key)) }
    func decode(_ type: UInt64.Type, forKey key: Key) throws -> UInt64 { try Scalar.integer(value(key), path(key)) }
    func decode<T: Decodable>(_ type: T.Type, forKey key: Key) throws -> T {
        try ValueDecoder(value: try value(key), codingPath: path(key)).decodeValue(T.self)
    }

    func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type, forKey key: Key) throws
        -> KeyedDecodingContainer<NestedKey>
    {
        try ValueDecoder(value: try value(key), codingPath: path(key)).container(keyedBy: type)
    }

    func nestedUnkeyedContainer(forKey key: Key) throws -> any UnkeyedDecodingContainer {
        try ValueDecoder(value: try value(key), codingPath: path(key)).unkeyedContainer()
    }

    func superDecoder() throws -> any Decoder {
        let key = JSONCodingKey("super")
        return ValueDecoder(value: object[key.stringValue] ?? .null, codingPath: codingPath + [key])
    }

    func superDecoder(forKey key: Key) throws -> any Decoder {
        ValueDecoder(value: object[key.stringValue] ?? .null, codingPath: path(key))
    }
}

private struct UnkeyedDecoder: UnkeyedDecodingContainer {
    let items: [JSONValue]
    let codingPath: [any CodingKey]
    var currentIndex = 0

    init(items: [JSONValue], codingPath: [any CodingKey]) {
        self.items = items
        self.codingPath = codingPath
    }

    var count: Int? { items.count }
    var isAtEnd: Bool { currentIndex >= items.count }

    private var path: [any CodingKey] { codingPath + [JSONCodingKey(index: currentIndex)] }

    private mutating func next<T>(_ read: (JSONValue, [any CodingKey]) throws -> T) throws -> T {
        guard !isAtEnd else {
            throw DecodingError.valueNotFound(
                T.self, .init(codingPath: path, debugDescription: "the array has only \(items.count) elements"))
        }
        let v = try read(items[currentIndex], path)
        currentIndex += 1
        return v
    }

    mutating func decodeNil() throws -> Bool {
        guard !isAtEnd else { return false }
        guard items[currentIndex].isNull else { return false }
        currentIndex += 1
        return true
    }
    mutating func decode(_ type: Bool.Type) throws -> Bool { try next(Scalar.bool) }
    mutating func decode(_ type: String.Type) throws -> String { try next(Scalar.string) }
    mutating func decode(_ type: Double.Type) throws -> Double { try next(Scalar.double) }
    mutating func decode(_ type: Float.Type) throws -> Float { Float(try next(Scalar.double)) }
    mutating func decode(_ type: Int.Type) throws -> Int { try next(Scalar.integer) }
    mutating func decode(_ type: Int8.Type) throws -> Int8 { try next(Scalar.integer) }
    mutating func decode(_ type: Int16.Type) throws -> Int16 { try next(Scalar.integer) }
    mutating func decode(_ type: Int32.Type) throws -> Int32 { try next(Scalar.integer) }
    mutating func decode(_ type: Int64.Type) throws -> Int64 { try next(Scalar.integer) }
    mutating func decode(_ type: UInt.Type) throws -> UInt { try next(Scalar.integer) }
    mutating func decode(_ type: UInt8.Type) throws -> UInt8 { try next(Scalar.integer) }
    mutating func decode(_ type: UInt16.Type) throws -> UInt16 { try next(Scalar.integer) }
    mutating func decode(_ type: UInt32.Type) throws -> UInt32 { try next(Scalar.integer) }
    mutating func decode(_ type: UInt64.Type) throws -> UInt64 { try next(Scalar.integer) }
    mutating func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try next { v, p in try ValueDecoder(value: v, codingPath: p).decodeValue(T.self) }
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy type: NestedKey.Type) throws
        -> KeyedDecodingContainer<NestedKey>
    {
        try next { v, p in try ValueDecoder(value: v, codingPath: p).container(keyedBy: type) }
    }

    mutating func nestedUnkeyedContainer() throws -> any UnkeyedDecodingContainer {
        try next { v, p in try ValueDecoder(value: v, codingPath: p).unkeyedContainer() }
    }

    mutating func superDecoder() throws -> any Decoder {
        try next { v, p in ValueDecoder(value: v, codingPath: p) }
    }
}

private struct SingleDecoder: SingleValueDecodingContainer {
    let value: JSONValue
    let codingPath: [any CodingKey]

    func decodeNil() -> Bool { value.isNull }
    func decode(_ type: Bool.Type) throws -> Bool { try Scalar.bool(value, codingPath) }
    func decode(_ type: String.Type) throws -> String { try Scalar.string(value, codingPath) }
    func decode(_ type: Double.Type) throws -> Double { try Scalar.double(value, codingPath) }
    func decode(_ type: Float.Type) throws -> Float { Float(try Scalar.double(value, codingPath)) }
    func decode(_ type: Int.Type) throws -> Int { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int8.Type) throws -> Int8 { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int16.Type) throws -> Int16 { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int32.Type) throws -> Int32 { try Scalar.integer(value, codingPath) }
    func decode(_ type: Int64.Type) throws -> Int64 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt.Type) throws -> UInt { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt8.Type) throws -> UInt8 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt16.Type) throws -> UInt16 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt32.Type) throws -> UInt32 { try Scalar.integer(value, codingPath) }
    func decode(_ type: UInt64.Type) throws -> UInt64 { try Scalar.integer(value, codingPath) }
    func decode<T: Decodable>(_ type: T.Type) throws -> T {
        try ValueDecoder(value: value, codingPath: codingPath).decodeValue(T.self)
    }
}

// MARK: - JSONValue itself is Codable

extension JSONValue: Codable {
    // With `JSONValueEncoder`/`JSONValueDecoder` the value passes through untouched; other coders see its structure.
    public func encode(to encoder: any Encoder) throws {
        switch self {
        case .null:
            var c = encoder.singleValueContainer()
            try c.encodeNil()
        case .bool(let b):
            var c = encoder.singleValueContainer()
            try c.encode(b)
        case .number(let n):
            var c = encoder.singleValueContainer()
            if let i = n.integer(as: Int64.self) {
                try c.encode(i)
            } else if let u = n.integer(as: UInt64.self) {
                try c.encode(u)
            } else {
                try c.encode(n.value)
            }
        case .string(let s):
            var c = encoder.singleValueContainer()
            try c.encode(s)
        case .array(let a):
            var c = encoder.unkeyedContainer()
            for v in a { try c.encode(v) }
        case .object(let o):
            var c = encoder.container(keyedBy: JSONCodingKey.self)
            for (k, v) in o.pairs { try c.encode(v, forKey: JSONCodingKey(k)) }
        }
    }

    public init(from decoder: any Decoder) throws {
        if let d = decoder as? ValueDecoder {
            self = d.value
            return
        }
        if let c = try? decoder.container(keyedBy: JSONCodingKey.self) {
            var o = JSONObject()
            for key in c.allKeys { o[key.stringValue] = try c.decode(JSONValue.self, forKey: key) }
            self = .object(o)
        } else if var c = try? decoder.unkeyedContainer() {
            var items: [JSONValue] = []
            while !c.isAtEnd { items.append(try c.decode(JSONValue.self)) }
            self = .array(items)
        } else {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() {
                self = .null
            } else if let b = try? c.decode(Bool.self) {
                self = .bool(b)
            } else if let s = try? c.decode(String.self) {
                self = .string(s)
            } else if let i = try? c.decode(Int64.self) {
                self = .number(JSONNumber(exactly: i))
            } else {
                self = .number(try c.decode(Double.self))
            }
        }
    }
}
