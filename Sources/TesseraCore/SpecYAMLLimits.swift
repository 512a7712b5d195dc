// What a job spec's YAML may contain, checked on libyaml's event stream before Yams composes a single node
// (docs/jobspec.md §Limits). An alias bomb ("billion laughs") is a few hundred bytes that expand to billions of
// nodes; composing it shares the repeated nodes, but converting, hashing or rendering them does not, and
// `tessera submit` grew past 2.8 GB on one. So anchors and aliases are refused at the first one, where the parser
// meets it (a '&' or '*' inside a quoted string, a block scalar or a comment is text, not an event, and passes), and
// the document's size, node count and nesting depth are capped. Yams' composer and its duplicate-key check recurse
// over the tree, so the depth cap also keeps a `[[[[…` document from exhausting the stack.
//
// libyaml is the parser Yams itself runs (its C target, CYaml, built and linked with it); Yams' own event API is
// private, so the events are read here with the same library and the same input encoding.

internal import CYaml

public enum SpecLimits {
    /// Largest spec text accepted, in UTF-8 bytes.
    public static let maxBytes = 1 << 20
    /// Most YAML nodes (scalars, lists and mappings, keys included) in one spec.
    public static let maxNodes = 100_000
    /// Deepest nesting of lists and mappings.
    public static let maxDepth = 64
}

enum SpecYAMLLimits {
    /// Throws a `SpecError` at the line and column of the first anchor, alias, node past `maxNodes` or collection
    /// past `maxDepth`. Returns without judging when libyaml finds a syntax error: Yams then reports it, as before.
    static func check(_ text: String, file: String) throws {
        let size = text.utf8.count
        guard size <= SpecLimits.maxBytes else {
            throw SpecError(
                file: file, line: nil, path: "",
                message: "the spec is \(size) bytes; a job spec may be at most \(SpecLimits.maxBytes) bytes (1 MiB)")
        }
        guard size > 0 else { return }  // "the spec is empty", said by the caller
        var text = text
        try text.withUTF8 { bytes in try scan(bytes, file: file) }
    }

    private static func scan(_ bytes: UnsafeBufferPointer<UInt8>, file: String) throws {
        var parser = yaml_parser_t()
        guard yaml_parser_initialize(&parser) == 1 else { return }
        defer { yaml_parser_delete(&parser) }
        yaml_parser_set_encoding(&parser, YAML_UTF8_ENCODING)
        yaml_parser_set_input_string(&parser, bytes.baseAddress, bytes.count)
        var nodes = 0
        var depth = 0
        while true {
            var event = yaml_event_t()
            guard yaml_parser_parse(&parser, &event) == 1 else { return }
            defer { yaml_event_delete(&event) }
            let mark = event.start_mark
            func refuse(_ message: String) -> SpecError {
                SpecError(file: file, line: Int(mark.line) + 1, column: Int(mark.column) + 1, path: "", message: message)
            }
            let anchor: UnsafeMutablePointer<yaml_char_t>?
            switch event.type {
            case YAML_STREAM_END_EVENT:
                return
            case YAML_ALIAS_EVENT:
                throw refuse(
                    "YAML alias '*\(name(event.data.alias.anchor))' is not accepted in a job spec (anchors and aliases "
                        + "are refused, so a spec cannot expand into more than it says); write the value out in full")
            case YAML_SCALAR_EVENT:
                anchor = event.data.scalar.anchor
            case YAML_SEQUENCE_START_EVENT:
                anchor = event.data.sequence_start.anchor
                depth += 1
            case YAML_MAPPING_START_EVENT:
                anchor = event.data.mapping_start.anchor
                depth += 1
            case YAML_SEQUENCE_END_EVENT, YAML_MAPPING_END_EVENT:
                depth -= 1
                continue
            default:
                continue
            }
            if let anchor {
                throw refuse(
                    "YAML anchor '&\(name(anchor))' is not accepted in a job spec (anchors and aliases are refused, so "
                        + "a spec cannot expand into more than it says); write the value out in full")
            }
            nodes += 1
            if nodes > SpecLimits.maxNodes {
                throw refuse("the spec has more than \(SpecLimits.maxNodes) YAML nodes (scalars, lists and mappings); "
                    + "a job spec may have at most \(SpecLimits.maxNodes)")
            }
            if depth > SpecLimits.maxDepth {
                throw refuse("lists and mappings nest more than \(SpecLimits.maxDepth) deep here; a job spec may nest "
                    + "at most \(SpecLimits.maxDepth) levels")
            }
        }
    }

    private static func name(_ p: UnsafeMutablePointer<yaml_char_t>?) -> String {
        guard let p else { return "" }
        let text = String(decoding: UnsafeBufferPointer(start: p, count: strlen(p)), as: UTF8.self)
        return text.count > 40 ? String(text.prefix(40)) + "…" : text
    }

    private static func strlen(_ p: UnsafeMutablePointer<yaml_char_t>) -> Int {
        var n = 0
        while p[n] != 0 { n += 1 }
        return n
    }
}
