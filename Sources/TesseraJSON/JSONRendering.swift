// Rendering JSON text. The bytes are part of Tessera's stored formats (results, golden fixtures, digests in tests):
// change nothing here without a format version.

extension JSONValue {
    /// JSON text. Non-finite numbers have no JSON spelling and render as `null`.
    ///
    /// - Parameters:
    ///   - pretty: two-space indentation, one key per line; arrays of scalars stay on one line (matrices stay
    ///     readable).
    ///   - shortEscapes: escape U+0008 and U+000C as `\b` and `\f`, as serde_json and Python's json do (the
    ///     safetensors writers), instead of `\u0008` and `\u000c`, which Tessera's stored JSON has always used.
    public func render(pretty: Bool = false, shortEscapes: Bool = false) -> String {
        var out = ""
        write(into: &out, pretty: pretty, shortEscapes: shortEscapes, indent: 0)
        return out
    }

    /// The compact rendering as UTF-8.
    public var utf8Bytes: [UInt8] { Array(render().utf8) }

    private func write(into out: inout String, pretty: Bool, shortEscapes: Bool, indent: Int) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .number(let n): out += n.description
        case .string(let s): JSONValue.writeString(s, into: &out, shortEscapes: shortEscapes)
        case .array(let a):
            if a.isEmpty {
                out += "[]"
                return
            }
            let scalarOnly = a.allSatisfy { v in
                switch v {
                case .array, .object: return false
                default: return true
                }
            }
            out += "["
            for (i, v) in a.enumerated() {
                if i > 0 { out += pretty && scalarOnly ? ", " : "," }
                if pretty && !scalarOnly { out += "\n" + String(repeating: "  ", count: indent + 1) }
                v.write(into: &out, pretty: pretty, shortEscapes: shortEscapes, indent: indent + 1)
            }
            if pretty && !scalarOnly { out += "\n" + String(repeating: "  ", count: indent) }
            out += "]"
        case .object(let o):
            if o.isEmpty {
                out += "{}"
                return
            }
            out += "{"
            for (i, p) in o.pairs.enumerated() {
                if i > 0 { out += "," }
                if pretty { out += "\n" + String(repeating: "  ", count: indent + 1) }
                JSONValue.writeString(p.key, into: &out, shortEscapes: shortEscapes)
                out += pretty ? ": " : ":"
                p.value.write(into: &out, pretty: pretty, shortEscapes: shortEscapes, indent: indent + 1)
            }
            if pretty { out += "\n" + String(repeating: "  ", count: indent) }
            out += "}"
        }
    }

    /// Shortest round-trip text; integers without a fraction part.
    public static func formatNumber(_ d: Double) -> String {
        guard d.isFinite else { return "null" }
        if d == d.rounded(), abs(d) < 1e15 {
            if d == 0 { return d.sign == .minus ? "-0.0" : "0" }
            return String(Int64(d))
        }
        // Swift's description is the shortest representation that round-trips; "1e-05" is valid JSON.
        return d.description
    }

    private static func writeString(_ s: String, into out: inout String, shortEscapes: Bool) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case "\u{08}" where shortEscapes: out += "\\b"
            case "\u{0C}" where shortEscapes: out += "\\f"
            default:
                if u.value < 0x20 {
                    let hex = String(u.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(u)
                }
            }
        }
        out += "\""
    }
}
