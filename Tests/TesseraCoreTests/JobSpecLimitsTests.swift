// Hostile YAML (issue 10, "Bad input"): anchors and aliases are refused on the event stream before anything is
// expanded, and a spec's size, node count and depth are capped, each with the line and column (docs/jobspec.md
// §Limits).

import Foundation
import Testing
import TesseraCore

@Suite struct JobSpecLimitsTests {
    static let head = "name: x\nkind: sampling\nalgorithm: ddim\nseed: 1\n"

    func error(_ text: String, file: String = "s.yaml") -> SpecError? {
        do {
            _ = try JobSpec.parse(text, file: file)
            return nil
        } catch let e as SpecError {
            return e
        } catch {
            Issue.record("not a SpecError: \(error)")
            return nil
        }
    }

    /// Peak resident set of this process so far, in bytes.
    static func peakRSS() -> Int {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        return usage.ru_maxrss * 1024
    }

    @Test("A billion-laughs alias bomb is refused at its first anchor, at once and without growing")
    func aliasBombIsRefusedFast() throws {
        // 9 levels of 9: 9^9 ≈ 387 million strings once expanded (the old parser grew past 2.8 GB on a smaller one).
        var text = Self.head + "params:\n  l0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for i in 1...9 {
            text += "  l\(i): &l\(i) [" + Array(repeating: "*l\(i - 1)", count: 9).joined(separator: ",") + "]\n"
        }
        let before = Self.peakRSS()
        let started = ContinuousClock.now
        let e = try #require(error(text, file: "bomb.yaml"))
        let elapsed = ContinuousClock.now - started
        #expect(e.line == 6 && e.column == 7, "\(e)")
        #expect(e.description.hasPrefix("bomb.yaml:6:7: YAML anchor '&l0' is not accepted in a job spec"), "\(e)")
        #expect(elapsed < .seconds(1), "took \(elapsed)")
        #expect(Self.peakRSS() - before < 64 << 20, "peak RSS grew by \(Self.peakRSS() - before) bytes")
    }

    @Test("An alias is refused where it stands, even one whose anchor is missing")
    func aliasesAreRefused() throws {
        let e = try #require(error(Self.head + "params: {a: 1, b: *nowhere}\n"))
        #expect(e.description == "s.yaml:5:19: YAML alias '*nowhere' is not accepted in a job spec (anchors and aliases are refused, so a spec cannot expand into more than it says); write the value out in full")
        // Through --set too: its value is YAML.
        #expect(throws: SpecError.self) { try JobSpec.parse(Self.head, file: "s.yaml", overrides: ["params.a=*x"]) }
        // An anchor on a mapping, a list or a key, with no alias at all, is refused as well.
        #expect(error(Self.head + "params: &p {a: 1}\n")?.description.hasPrefix("s.yaml:5:9: YAML anchor '&p'") == true)
        #expect(error(Self.head + "params:\n  a: !!seq &q [1]\n")?.description.hasPrefix("s.yaml:6:6: YAML anchor '&q'") == true)
        #expect(error(Self.head + "params:\n  &k a: 1\n")?.description.hasPrefix("s.yaml:6:3: YAML anchor '&k'") == true)
    }

    @Test("'&' and '*' in quoted strings, plain scalars, block scalars and comments are text")
    func starsAndAmpersandsInTextStillParse() throws {
        let text = Self.head + """
            # a comment with &anchor and *alias in it
            params:
              a: "glob *.yaml & friends"   # and *here
              b: 'it''s &not an anchor'
              c: a*b&c
              d: x *y &z
              e: |
                *not an alias
                &not an anchor
              f: [ "*", '&', "[*a, &b]" ]
              g: {"*k": '&v'}
            """
        let spec = try JobSpec.parse(text, file: "ok.yaml")
        let p = spec.params
        #expect(p["a"]?.stringValue == "glob *.yaml & friends")
        #expect(p["b"]?.stringValue == "it's &not an anchor")
        #expect(p["c"]?.stringValue == "a*b&c")
        #expect(p["d"]?.stringValue == "x *y &z")
        #expect(p["e"]?.stringValue == "*not an alias\n&not an anchor\n")
        #expect(p["f"] == .array([.string("*"), .string("&"), .string("[*a, &b]")]))
        #expect(p["g"]?["*k"]?.stringValue == "&v")
        #expect(spec.source.lines["params.e"] == 11)
    }

    @Test("Size, node count and depth are capped, with where and what the limit is")
    func capsAreEnforced() throws {
        let big = Self.head + "params: {pad: \"" + String(repeating: "x", count: SpecLimits.maxBytes) + "\"}\n"
        #expect(error(big)?.description == "s.yaml: the spec is \(big.utf8.count) bytes; a job spec may be at most 1048576 bytes (1 MiB)")

        // maxNodes scalars in one list, plus the document's own nodes: over the cap, named at the first node past it.
        let many = Self.head + "params:\n  xs: [" + Array(repeating: "0", count: SpecLimits.maxNodes).joined(separator: ",") + "]\n"
        let e = try #require(error(many))
        #expect(e.line == 6, "\(e)")
        #expect(e.message == "the spec has more than 100000 YAML nodes (scalars, lists and mappings); a job spec may have at most 100000")
        // Just under it is fine (the validation after it is not about size).
        let fewer = Self.head + "params:\n  xs: [" + Array(repeating: "0", count: SpecLimits.maxNodes - 20).joined(separator: ",") + "]\n"
        #expect(throws: Never.self) { try JobSpec.parse(fewer, file: "s.yaml") }

        // The root mapping and params are two levels: the 63rd '[' (column 6 + 62) is the 65th.
        let deep = Self.head + "params:\n  d: " + String(repeating: "[", count: 200) + String(repeating: "]", count: 200) + "\n"
        let d = try #require(error(deep))
        #expect(d.description == "s.yaml:6:68: lists and mappings nest more than 64 deep here; a job spec may nest at most 64 levels", "\(d)")
        // Far deeper, libyaml's own nesting limit (1000) stops the scanner first: a syntax error, and no stack used.
        let deeper = Self.head + "params:\n  d: " + String(repeating: "[", count: 500_000) + String(repeating: "]", count: 500_000) + "\n"
        #expect(error(deeper)?.description.hasPrefix("s.yaml:6: YAML syntax error: Maximum nesting level reached") == true)
        let ok = Self.head + "params:\n  d: " + String(repeating: "[", count: 60) + String(repeating: "]", count: 60) + "\n"
        #expect(throws: Never.self) { try JobSpec.parse(ok, file: "s.yaml") }
    }

    @Test("Syntax errors are still Yams' messages, and the existing errors keep their form")
    func otherErrorsUnchanged() throws {
        #expect(error("name: x\nkind: [rl\n")?.description.hasPrefix("s.yaml:") == true)
        #expect(error("")?.description == "s.yaml: the spec is empty")
        #expect(error("name: x\nname: y\n")?.description.hasPrefix("s.yaml:2: duplicate key 'name'") == true)
    }
}
