import Testing
import TesseraJSON

@Suite struct JSONRoundTripTests {
    /// Random bit patterns cover every exponent, both signs and the subnormals (1 in 2048 draws) in proportion.
    @Test func randomDoublesRoundTripBitExactly() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<50_000 {
            let d = Double(bitPattern: rng.next() as UInt64)
            guard d.isFinite else { continue }
            try Self.expectRoundTrip(d)
        }
    }

    @Test func edgeDoublesRoundTripBitExactly() throws {
        let edges: [Double] = [
            0, -0.0, .leastNonzeroMagnitude, -.leastNonzeroMagnitude, .leastNormalMagnitude,
            .leastNormalMagnitude.nextDown, .greatestFiniteMagnitude, -.greatestFiniteMagnitude, 1, -1, 0.1, 1e15,
            1e15.nextDown, 1e15.nextUp, 9_007_199_254_740_992, 9_007_199_254_740_994, 1e-5, 2.2250738585072014e-308,
        ]
        for d in edges { try Self.expectRoundTrip(d) }
        // Every subnormal exponent: 2^-1074 ... 2^-1023, and one value with all mantissa bits set.
        for shift in 0..<52 { try Self.expectRoundTrip(Double(bitPattern: 1 << UInt64(shift))) }
        try Self.expectRoundTrip(Double(bitPattern: (1 << 52) - 1))
        #expect(JSONValue.number(-0.0).render() == "-0.0")
        #expect(JSONValue.number(0).render() == "0")
    }

    static func expectRoundTrip(_ d: Double, sourceLocation: SourceLocation = #_sourceLocation) throws {
        for spelling in [JSONNumber.Spelling.shortest, .swiftDescription] {
            let text = JSONValue.number(JSONNumber(d, spelling: spelling)).render()
            for options in [JSONParseOptions.standard, .strict] {
                let back = try JSONValue.parse(text, options: options)
                #expect(back.doubleValue?.bitPattern == d.bitPattern, "\(text)", sourceLocation: sourceLocation)
            }
        }
    }

    @Test func renderingIsTheStoredForm() throws {
        // These bytes are stored results and golden fixtures: they must never change.
        let v: JSONValue = .object([
            "i": .int(42), "neg": .int(-7), "half": .number(0.5), "tiny": .number(1e-5), "big": .number(1e15), "huge": .number(1e17),
            "bigger": .number(1.5e300), "nan": .number(.nan), "s": .string("a\"b\\c\n\r\t\u{08}\u{0C}\u{01}é"),
            "list": .array([.null, .bool(true), .bool(false)]), "empty": .object([:]), "none": .array([]),
        ])
        #expect(
            v.render()
                == #"{"i":42,"neg":-7,"half":0.5,"tiny":1e-05,"big":1000000000000000.0,"huge":1e+17,"bigger":1.5e+300,"nan":null,"s":"a\"b\\c\n\r\t\u0008\u000c\u0001é","list":[null,true,false],"empty":{},"none":[]}"#
        )
        #expect(JSONValue.string("\u{08}\u{0C}").render(shortEscapes: true) == #""\b\f""#)
        #expect(
            JSONValue.object(["m": .array([.array([.int(1), .int(2)])]), "k": .array([.int(1), .int(2)])]).render(pretty: true)
                == "{\n  \"m\": [\n    [1, 2]\n  ],\n  \"k\": [1, 2]\n}")
        #expect(JSONValue.number(JSONNumber(1, spelling: .swiftDescription)).render() == "1.0")
        #expect(JSONValue.number(JSONNumber(1e16, spelling: .swiftDescription)).render() == "1e+16")
        #expect(JSONValue.number(JSONNumber(.infinity, spelling: .swiftDescription)).render() == "null")
    }

    @Test func objectsKeepInsertionOrder() throws {
        let text = #"{"z":1,"a":2,"m":{"y":1,"b":2}}"#
        let v = try JSONValue.parse(text)
        #expect(v.objectValue?.keys == ["z", "a", "m"])
        #expect(v.render() == text)
    }
}

@Suite struct JSONParseTests {
    @Test func rejectsGarbage() {
        for bad in ["", "{", "[1,]", "{\"a\"}", "tru", "\"abc", "1 2", "[\"\\q\"]", "nan", "\"\\ud800\"", "[1e400]"] {
            #expect(throws: JSONError.self, "\(bad)") { try JSONValue.parse(bad) }
        }
    }

    @Test func duplicateKeysNameTheKeyAndItsOffset() throws {
        for options in [JSONParseOptions.standard, .strict] {
            let text = #"{"a":1, "b":{"c":2,"c":3}}"#
            do {
                _ = try JSONValue.parse(text, options: options)
                Issue.record("a duplicate key was accepted")
            } catch let e as JSONError {
                #expect(e.duplicateKey == "c")
                #expect(e.offset == 19)  // the second "c"'s opening quote
                #expect("\(e)".contains("duplicate key 'c'"))
            }
        }
    }

    @Test func strictNumbersFollowRFC8259() throws {
        for bad in ["+1", ".5", "1.", "01", "-", "1e", "1e+", "-.5", "0x10"] {
            #expect(throws: JSONError.self, "\(bad)") { try JSONValue.parse("[\(bad)]", options: .strict) }
        }
        // The standard grammar is Double's, as it always was.
        #expect(try JSONValue.parse("[1.]").arrayValue?.first?.doubleValue == 1)
        #expect(try JSONValue.parse("[+1]").arrayValue?.first?.doubleValue == 1)
        // Deep nesting is an error, not a crash; strict stops at 64.
        #expect(throws: JSONError.self) { try JSONValue.parse(String(repeating: "[", count: 65) + String(repeating: "]", count: 65), options: .strict) }
        #expect(throws: Never.self) { try JSONValue.parse(String(repeating: "[", count: 64) + String(repeating: "]", count: 64), options: .strict) }
    }

    @Test func strictModeKeepsLiterals() throws {
        let v = try JSONValue.parse("[8, 8.0, 8e0, 18446744073709551615, -3]", options: .strict)
        let numbers = v.arrayValue?.compactMap(\.numberValue) ?? []
        #expect(numbers.count == 5)
        #expect(numbers.map(\.literal) == ["8", "8.0", "8e0", "18446744073709551615", "-3"])
        #expect(numbers.map(\.unsignedIntegerLiteral) == [8, nil, nil, UInt64.max, nil])
        // Equal values whatever the spelling; rendering keeps the literal.
        #expect(numbers[0] == numbers[1] && numbers[1] == numbers[2])
        #expect(v.render() == "[8,8.0,8e0,18446744073709551615,-3]")
    }

    @Test func integersBeyondDoublesStayExact() throws {
        for u: UInt64 in [.max, .max - 1, 1 << 53 + 1, 12_345_678_901_234_567_891] {
            let v = try JSONValue.parse("[\(u)]")
            #expect(v.arrayValue?.first?.uint64Value == u)
            #expect(v.render() == "[\(u)]")
        }
        for i: Int64 in [.min, .max, -(1 << 53) - 1] {
            #expect(try JSONValue.parse("\(i)").int64Value == i)
        }
        // 2^64 - 1 and 2^64 round to the same double, and still differ.
        let a = try JSONValue.parse("18446744073709551615"), b = try JSONValue.parse("18446744073709551616")
        #expect(a.doubleValue == b.doubleValue)
        #expect(a != b)
        #expect(a.uint64Value == UInt64.max && b.uint64Value == nil)
        // A rounded double says nothing exact beyond 2^53.
        #expect(JSONValue.number(1.8446744073709552e19).uint64Value == nil)
        #expect(JSONValue.number(9_007_199_254_740_992).uint64Value == 1 << 53)
        #expect(JSONValue.number(JSONNumber(exactly: UInt64.max)).render() == "18446744073709551615")
        #expect(JSONValue.number(JSONNumber(exactly: 1_000_000_000_000_000)).render() == "1000000000000000")
        // Leading zeros the standard grammar lets through do not reach the output.
        #expect(try JSONValue.parse("00018446744073709551615").render() == "18446744073709551615")
    }
}
