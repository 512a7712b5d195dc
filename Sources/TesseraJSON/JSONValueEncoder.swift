// Encodable → JSONValue. Keys come out in the order `encode(to:)` writes them (for synthesized conformances, the
// order the properties are declared), so a Codable type fixes its JSON layout byte for byte.

/// Encodes `Encodable` values as `JSONValue`.
///
/// - Doubles are exact (`JSONNumber(_:)`, rendered in Tessera's shortest form); non-finite ones become numbers that
///   render as `null`, as every JSONValue always has (`JSONValueDecoder` reads `null` back as NaN).
/// - Integers are exact at any width: beyond ±2^53 they keep their decimal digits.
/// - `nil` optionals written with `encodeIfPresent` (what synthesized conformances do) leave their key out.
/// - A `JSONValue` inside the value is stored as it is.
public struct JSONValueEncoder: Sendable {
    public init() {}

    public func encode(_ value: some Encodable) throws -> JSONValue {
        try JSONValueEncoding.box(value, codingPath: [])
    }
}

/// A value being encoded: containers are reference types, because `nestedContainer` hands out a container whose
/// writes must land inside its parent after the call returns.
private final class EncodingNode {
    enum Content {
        case empty
        case value(JSONValue)
        case object(keys: [String: Int], pairs: [(String, EncodingNode)])
        case array([EncodingNode])
    }
    var content: Content = .empty

    init() {}
    init(_ value: JSONValue) { content = .value(value) }

    var value: JSONValue {
        switch content {
        case .empty: return .object([:])  // an `encode(to:)` that wrote nothing: Foundation writes {} too
        case .value(let v): return v
        case .object(_, let pairs):
            var o = JSONObject()
            for (k, node) in pairs { o.appendNew(k, node.value) }
            return .object(o)
        case .array(let items): return .array(items.map(\.value))
        }
    }

    /// The keyed child for `key` (replacing an earlier value under the same key, in place).
    func child(_ key: String, codingPath: [any CodingKey]) -> EncodingNode {
        if case .empty = content { content = .object(keys: [:], pairs: []) }
        guard case .object(var keys, var pairs) = content else {
            preconditionFailure("JSONValueEncoder: a keyed container at \(JSONCodingPath.text(codingPath)) after another kind")
        }
        let node = EncodingNode()
        if let i = keys[key] {
            pairs[i].1 = node
        } else {
            keys[key] = pairs.count
            pairs.append((key, node))
        }
        content = .object(keys: keys, pairs: pairs)
        return node
    }

    func append(codingPath: [any CodingKey]) -> EncodingNode {
        if case .empty = content { content = .array([]) }
        guard case .array(var items) = content else {
            preconditionFailure("JSONValueEncoder: an unkeyed container at \(JSONCodingPath.text(codingPath)) after another kind")
        }
        let node = EncodingNode()
        items.append(node)
        content = .array(items)
        return node
    }

    var count: Int {
        if case .array(let items) = content { return items.count }
        return 0
    }
}

enum JSONValueEncoding {
    static func box(_ value: some Encodable, codingPath: [any CodingKey]) throws -> JSONValue {
        if let v = value as? JSONValue { return v }
        let node = EncodingNode()
        try value.encode(to: ValueEncoder(node: node, codingPath: codingPath))
        return node.value
    }

    static func number(_ d: Double) -> JSONValue { .number(JSONNumber(d)) }
    static func number(_ i: some BinaryInteger) -> JSONValue { .number(JSONNumber(exactly: i)) }
}

private struct ValueEncoder: Encoder {
    let node: EncodingNode
    let codingPath: [any CodingKey]
    var userInfo: [CodingUserInfoKey: Any] { [:] }

    func container<Key: CodingKey>(keyedBy type: Key.Type) -> KeyedEncodingContainer<Key> {
        if case .empty = node.content { node.content = .object(keys: [:], pairs: []) }
        return KeyedEncodingContainer(KeyedEncoder<Key>(node: node, codingPath: codingPath))
    }

    func unkeyedContainer() -> any UnkeyedEncodingContainer {
        if case .empty = node.content { node.content = .array([]) }
        return UnkeyedEncoder(node: node, codingPath: codingPath)
    }

    func singleValueContainer() -> any SingleValueEncodingContainer {
        SingleEncoder(node: node, codingPath: codingPath)
    }
}

private struct KeyedEncoder<Key: CodingKey>: KeyedEncodingContainerProtocol {
    let node: EncodingNode
    let codingPath: [any CodingKey]

    private func set(_ v: JSONValue, _ key: Key) { node.child(key.stringValue, codingPath: codingPath).content = .value(v) }

    mutating func encodeNil(forKey key: Key) throws { set(.null, key) }
    mutating func encode(_ value: Bool, forKey key: Key) throws { set(.bool(value), key) }
    mutating func encode(_ value: String, forKey key: Key) throws { set(.string(value), key) }
    mutating func encode(_ value: Double, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: Float, forKey key: Key) throws { set(JSONValueEncoding.number(Double(value)), key) }
    mutating func encode(_ value: Int, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: Int8, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: Int16, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: Int32, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: Int64, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: UInt, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: UInt8, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: UInt16, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: UInt32, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: UInt64, forKey key: Key) throws { set(JSONValueEncoding.number(value), key) }
    mutating func encode(_ value: some Encodable, forKey key: Key) throws {
        set(try JSONValueEncoding.box(value, codingPath: codingPath + [key]), key)
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type, forKey key: Key)
        -> KeyedEncodingContainer<NestedKey>
    {
        let child = node.child(key.stringValue, codingPath: codingPath)
        child.content = .object(keys: [:], pairs: [])
        return KeyedEncodingContainer(KeyedEncoder<NestedKey>(node: child, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer(forKey key: Key) -> any UnkeyedEncodingContainer {
        let child = node.child(key.stringValue, codingPath: codingPath)
        child.content = .array([])
        return UnkeyedEncoder(node: child, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let key = JSONCodingKey("super")
        return ValueEncoder(node: node.child(key.stringValue, codingPath: codingPath), codingPath: codingPath + [key])
    }

    mutating func superEncoder(forKey key: Key) -> any Encoder {
        ValueEncoder(node: node.child(key.stringValue, codingPath: codingPath), codingPath: codingPath + [key])
    }
}

private struct UnkeyedEncoder: UnkeyedEncodingContainer {
    let node: EncodingNode
    let codingPath: [any CodingKey]
    var count: Int { node.count }

    private func append(_ v: JSONValue) { node.append(codingPath: codingPath).content = .value(v) }
    private var nextKey: JSONCodingKey { JSONCodingKey(index: count) }

    mutating func encodeNil() throws { append(.null) }
    mutating func encode(_ value: Bool) throws { append(.bool(value)) }
    mutating func encode(_ value: String) throws { append(.string(value)) }
    mutating func encode(_ value: Double) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Float) throws { append(JSONValueEncoding.number(Double(value))) }
    mutating func encode(_ value: Int) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int8) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int16) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int32) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int64) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt8) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt16) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt32) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt64) throws { append(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: some Encodable) throws {
        append(try JSONValueEncoding.box(value, codingPath: codingPath + [nextKey]))
    }

    mutating func nestedContainer<NestedKey: CodingKey>(keyedBy keyType: NestedKey.Type)
        -> KeyedEncodingContainer<NestedKey>
    {
        let key = nextKey
        let child = node.append(codingPath: codingPath)
        child.content = .object(keys: [:], pairs: [])
        return KeyedEncodingContainer(KeyedEncoder<NestedKey>(node: child, codingPath: codingPath + [key]))
    }

    mutating func nestedUnkeyedContainer() -> any UnkeyedEncodingContainer {
        let key = nextKey
        let child = node.append(codingPath: codingPath)
        child.content = .array([])
        return UnkeyedEncoder(node: child, codingPath: codingPath + [key])
    }

    mutating func superEncoder() -> any Encoder {
        let key = nextKey
        return ValueEncoder(node: node.append(codingPath: codingPath), codingPath: codingPath + [key])
    }
}

private struct SingleEncoder: SingleValueEncodingContainer {
    let node: EncodingNode
    let codingPath: [any CodingKey]

    private func set(_ v: JSONValue) { node.content = .value(v) }

    mutating func encodeNil() throws { set(.null) }
    mutating func encode(_ value: Bool) throws { set(.bool(value)) }
    mutating func encode(_ value: String) throws { set(.string(value)) }
    mutating func encode(_ value: Double) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Float) throws { set(JSONValueEncoding.number(Double(value))) }
    mutating func encode(_ value: Int) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int8) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int16) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int32) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: Int64) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt8) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt16) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt32) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: UInt64) throws { set(JSONValueEncoding.number(value)) }
    mutating func encode(_ value: some Encodable) throws { set(try JSONValueEncoding.box(value, codingPath: codingPath)) }
}

/// A coding key for positions in arrays, `super`, and keys a type builds at run time (`mode_weight_3`).
public struct JSONCodingKey: CodingKey, Sendable, Hashable {
    public var stringValue: String
    public var intValue: Int?

    public init(_ string: String) {
        stringValue = string
        intValue = nil
    }
    public init(index: Int) {
        stringValue = "\(index)"
        intValue = index
    }
    public init?(stringValue: String) { self.init(stringValue) }
    public init?(intValue: Int) { self.init(index: intValue) }
}

/// Coding paths as readers see them: `sampler.schedule.steps`, `points[2].beta`.
public enum JSONCodingPath {
    public static func text(_ path: [any CodingKey]) -> String {
        var out = ""
        for key in path {
            if let i = key.intValue, key.stringValue == "\(i)" {
                out += "[\(i)]"
            } else {
                out += out.isEmpty ? key.stringValue : "." + key.stringValue
            }
        }
        return out
    }
}
