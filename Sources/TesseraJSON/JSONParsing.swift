// Parsing JSON text into `JSONValue`.

/// Why a text is not JSON (or not JSON the parser accepts): what, and the byte offset where.
public struct JSONError: Error, Sendable, CustomStringConvertible {
    public var message: String
    /// The byte offset of the problem (for a duplicate key, of the second occurrence's opening quote).
    public var offset: Int
    /// The key, when the problem is a key that appears twice in one object.
    public var duplicateKey: String?

    public init(message: String, offset: Int, duplicateKey: String? = nil) {
        self.message = message
        self.offset = offset
        self.duplicateKey = duplicateKey
    }

    public var description: String { "invalid JSON at byte \(offset): \(message)" }
}

/// How strictly `JSONValue.parse` reads. Either way, a key that appears twice in one object is an error
/// (`JSONError.duplicateKey` names it): an ordered object cannot hold both, and keeping either would hide a mistake.
public struct JSONParseOptions: Sendable {
    /// Nesting limit, so a hostile input cannot exhaust the stack.
    public var maxDepth: Int
    /// Numbers must follow RFC 8259's grammar exactly (no `+1`, `.5`, `1.`, `01`), every number keeps its literal
    /// (`JSONNumber.literal`, so a reader can require integer literals and read 64-bit integers exactly), and a
    /// literal beyond the double range is kept (its value is then infinite) rather than rejected.
    public var strictNumbers: Bool

    public init(maxDepth: Int = 256, strictNumbers: Bool = false) {
        self.maxDepth = maxDepth
        self.strictNumbers = strictNumbers
    }

    /// What Tessera's stored and wire JSON is read with: the number grammar `Double(String)` accepts, nesting up to
    /// 256, integer literals beyond ±2^53 kept exactly.
    public static let standard = JSONParseOptions()

    /// For formats that other programs write and that must be read exactly as their specification says (safetensors
    /// headers): RFC 8259 numbers with their literals, nesting up to 64.
    public static let strict = JSONParseOptions(maxDepth: 64, strictNumbers: true)
}

extension JSONValue {
    public static func parse(_ text: String, options: JSONParseOptions = .standard) throws -> JSONValue {
        try parse(Array(text.utf8), options: options)
    }

    public static func parse(_ bytes: [UInt8], options: JSONParseOptions = .standard) throws -> JSONValue {
        try bytes.withUnsafeBufferPointer { try parse(buffer: $0, options: options) }
    }

    /// Parses bytes in place (a safetensors header inside a file's buffer, say) without copying them.
    public static func parse(buffer: UnsafeBufferPointer<UInt8>, options: JSONParseOptions = .standard) throws
        -> JSONValue
    {
        var p = JSONParser(bytes: buffer, options: options)
        p.skipWhitespace()
        let v = try p.parseValue(depth: 0)
        p.skipWhitespace()
        guard p.pos == buffer.count else { throw JSONError(message: "trailing characters", offset: p.pos) }
        return v
    }
}

private struct JSONParser {
    let bytes: UnsafeBufferPointer<UInt8>
    let options: JSONParseOptions
    var pos = 0

    init(bytes: UnsafeBufferPointer<UInt8>, options: JSONParseOptions) {
        self.bytes = bytes
        self.options = options
    }

    mutating func skipWhitespace() {
        while pos < bytes.count, bytes[pos] == 0x20 || bytes[pos] == 0x0A || bytes[pos] == 0x0D || bytes[pos] == 0x09 {
            pos += 1
        }
    }

    func fail(_ m: String) -> JSONError { JSONError(message: m, offset: pos) }

    mutating func expect(_ literal: String) throws {
        for b in literal.utf8 {
            guard pos < bytes.count, bytes[pos] == b else { throw fail("expected '\(literal)'") }
            pos += 1
        }
    }

    mutating func parseValue(depth: Int) throws -> JSONValue {
        guard depth < options.maxDepth else { throw fail("nesting deeper than \(options.maxDepth)") }
        guard pos < bytes.count else { throw fail("unexpected end of input") }
        switch bytes[pos] {
        case UInt8(ascii: "n"):
            try expect("null")
            return .null
        case UInt8(ascii: "t"):
            try expect("true")
            return .bool(true)
        case UInt8(ascii: "f"):
            try expect("false")
            return .bool(false)
        case UInt8(ascii: "\""): return .string(try parseString())
        case UInt8(ascii: "["):
            pos += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "]") {
                pos += 1
                return .array(items)
            }
            while true {
                skipWhitespace()
                items.append(try parseValue(depth: depth + 1))
                skipWhitespace()
                guard pos < bytes.count else { throw fail("unterminated array") }
                if bytes[pos] == UInt8(ascii: ",") {
                    pos += 1
                } else if bytes[pos] == UInt8(ascii: "]") {
                    pos += 1
                    return .array(items)
                } else {
                    throw fail("expected ',' or ']'")
                }
            }
        case UInt8(ascii: "{"):
            pos += 1
            var obj = JSONObject()
            var keys = Set<String>()
            skipWhitespace()
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "}") {
                pos += 1
                return .object(obj)
            }
            while true {
                skipWhitespace()
                guard pos < bytes.count, bytes[pos] == UInt8(ascii: "\"") else { throw fail("expected a string key") }
                let keyStart = pos
                let key = try parseString()
                guard keys.insert(key).inserted else {
                    throw JSONError(message: "duplicate key '\(key)'", offset: keyStart, duplicateKey: key)
                }
                skipWhitespace()
                try expect(":")
                skipWhitespace()
                obj.appendNew(key, try parseValue(depth: depth + 1))
                skipWhitespace()
                guard pos < bytes.count else { throw fail("unterminated object") }
                if bytes[pos] == UInt8(ascii: ",") {
                    pos += 1
                } else if bytes[pos] == UInt8(ascii: "}") {
                    pos += 1
                    return .object(obj)
                } else {
                    throw fail("expected ',' or '}'")
                }
            }
        default:
            return .number(try options.strictNumbers ? parseStrictNumber() : parseNumber())
        }
    }

    /// The number grammar `Double(String)` accepts, over the characters JSON numbers use.
    mutating func parseNumber() throws -> JSONNumber {
        let start = pos
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        var sawDigit = false
        while pos < bytes.count {
            let c = bytes[pos]
            if c >= 0x30 && c <= 0x39 {
                sawDigit = true
            } else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") || c == UInt8(ascii: "+")
                || c == UInt8(ascii: "-")
            {
            } else {
                break
            }
            pos += 1
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        guard sawDigit, let d = Double(text), d.isFinite else {
            pos = start
            throw fail("invalid number")
        }
        // An integer from 2^53 on (where neighbouring integers start to round to one double) keeps its digits,
        // without the leading zeros this grammar lets through, so it stays exact; every other number is its double.
        guard d.magnitude >= Double(JSONNumber.maxExactDoubleInteger), let digits = Self.integerDigits(text) else {
            return JSONNumber(d)
        }
        return JSONNumber(value: d, literal: digits)
    }

    /// `text` without leading zeros when it is an integer literal (an optional minus sign and digits), else nil.
    static func integerDigits(_ text: String) -> String? {
        let negative = text.utf8.first == UInt8(ascii: "-")
        let digits = negative ? text.utf8.dropFirst() : text.utf8[...]
        guard !digits.isEmpty, digits.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else { return nil }
        let significant = digits.drop(while: { $0 == 0x30 })
        return (negative ? "-" : "") + (significant.isEmpty ? "0" : String(decoding: significant, as: UTF8.self))
    }

    /// RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`, with its literal.
    mutating func parseStrictNumber() throws -> JSONNumber {
        let start = pos
        func digit(_ b: UInt8) -> Bool { b >= UInt8(ascii: "0") && b <= UInt8(ascii: "9") }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "-") { pos += 1 }
        guard pos < bytes.count, digit(bytes[pos]) else {
            pos = start
            throw fail(start < bytes.count && bytes[start] != UInt8(ascii: "-") ? "unexpected character" : "invalid number")
        }
        if bytes[pos] == UInt8(ascii: "0") {
            pos += 1
        } else {
            while pos < bytes.count, digit(bytes[pos]) { pos += 1 }
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: ".") {
            pos += 1
            guard pos < bytes.count, digit(bytes[pos]) else { throw fail("invalid number fraction") }
            while pos < bytes.count, digit(bytes[pos]) { pos += 1 }
        }
        if pos < bytes.count, bytes[pos] == UInt8(ascii: "e") || bytes[pos] == UInt8(ascii: "E") {
            pos += 1
            if pos < bytes.count, bytes[pos] == UInt8(ascii: "+") || bytes[pos] == UInt8(ascii: "-") { pos += 1 }
            guard pos < bytes.count, digit(bytes[pos]) else { throw fail("invalid number exponent") }
            while pos < bytes.count, digit(bytes[pos]) { pos += 1 }
        }
        let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<pos]), as: UTF8.self)
        // The grammar is Double's too; a literal beyond its range reads as an infinity and keeps its exact text.
        guard let d = Double(text) else { throw fail("invalid number") }
        return JSONNumber(value: d, literal: text)
    }

    mutating func parseString() throws -> String {
        pos += 1  // opening quote
        var scalars = String.UnicodeScalarView()
        var run = pos
        func flush(_ p: Int) throws {
            if p > run {
                guard let s = String(validating: UnsafeBufferPointer(rebasing: bytes[run..<p]), as: UTF8.self) else {
                    throw fail("invalid UTF-8")
                }
                scalars.append(contentsOf: s.unicodeScalars)
            }
        }
        while pos < bytes.count {
            let c = bytes[pos]
            if c == UInt8(ascii: "\"") {
                try flush(pos)
                pos += 1
                return String(scalars)
            }
            if c < 0x20 { throw fail("control character in string") }
            if c == UInt8(ascii: "\\") {
                try flush(pos)
                pos += 1
                guard pos < bytes.count else { break }
                let e = bytes[pos]
                pos += 1
                switch e {
                case UInt8(ascii: "\""): scalars.append("\"")
                case UInt8(ascii: "\\"): scalars.append("\\")
                case UInt8(ascii: "/"): scalars.append("/")
                case UInt8(ascii: "b"): scalars.append("\u{08}")
                case UInt8(ascii: "f"): scalars.append("\u{0C}")
                case UInt8(ascii: "n"): scalars.append("\n")
                case UInt8(ascii: "r"): scalars.append("\r")
                case UInt8(ascii: "t"): scalars.append("\t")
                case UInt8(ascii: "u"):
                    var code = try hex4()
                    if code >= 0xD800 && code < 0xDC00 {
                        try expect("\\u")
                        let low = try hex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw fail("invalid surrogate pair") }
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    }
                    guard let u = Unicode.Scalar(code) else { throw fail("invalid \\u escape") }
                    scalars.append(u)
                default: throw fail("invalid escape")
                }
                run = pos
                continue
            }
            pos += 1
        }
        throw fail("unterminated string")
    }

    mutating func hex4() throws -> UInt32 {
        guard pos + 4 <= bytes.count else { throw fail("short \\u escape") }
        var v: UInt32 = 0
        for _ in 0..<4 {
            let c = bytes[pos]
            let d: UInt32
            switch c {
            case 0x30...0x39: d = UInt32(c - 0x30)
            case 0x41...0x46: d = UInt32(c - 0x41 + 10)
            case 0x61...0x66: d = UInt32(c - 0x61 + 10)
            default: throw fail("invalid hex digit")
            }
            v = v * 16 + d
            pos += 1
        }
        return v
    }
}
