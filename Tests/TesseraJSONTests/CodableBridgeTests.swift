import Testing
import TesseraJSON

@Suite struct CodableBridgeTests {
    enum Shape: Codable, Equatable {
        case point
        case circle(radius: Double)
        case polygon([Int], closed: Bool)
    }

    enum Color: String, Codable {
        case red, green
    }

    struct Inner: Codable, Equatable {
        var name: String
        var weights: [Double]
        var note: String?
    }

    struct Outer: Codable, Equatable {
        var id: UInt64
        var offset: Int64
        var ratio: Double
        var small: Float
        var flag: Bool
        var color: Color
        var inner: Inner
        var items: [Inner]
        var shapes: [Shape]
        var table: [[Double]]
        var maybe: Int?
        var raw: JSONValue
    }

    static let sample = Outer(
        id: .max, offset: .min, ratio: 0.1, small: 0.1, flag: true, color: .green,
        inner: Inner(name: "a\"b", weights: [1, -0.0, .leastNonzeroMagnitude], note: nil),
        items: [Inner(name: "x", weights: [], note: "n")],
        shapes: [.point, .circle(radius: 2.5), .polygon([1, 2, 3], closed: false)],
        table: [[1, 2], [3, 4.5]], maybe: nil, raw: .object(["k": .array([.int(1), .null])]))

    @Test func roundTripsNestedStructsEnumsAndOptionals() throws {
        let value = try JSONValueEncoder().encode(Self.sample)
        let back = try JSONValueDecoder().decode(Outer.self, from: value)
        #expect(back == Self.sample)
        // And through text, as stored and sent.
        let reparsed = try JSONValueDecoder().decode(Outer.self, from: try JSONValue.parse(value.render()))
        #expect(reparsed == Self.sample)
        #expect(reparsed.inner.weights.map(\.bitPattern) == Self.sample.inner.weights.map(\.bitPattern))
    }

    @Test func keysComeInDeclarationOrderAndNilIsLeftOut() throws {
        let value = try JSONValueEncoder().encode(Self.sample)
        #expect(
            value.objectValue?.keys
                == ["id", "offset", "ratio", "small", "flag", "color", "inner", "items", "shapes", "table", "raw"])
        #expect(value["inner"]?.objectValue?.keys == ["name", "weights"])
        #expect(value["id"]?.render() == "18446744073709551615")
        #expect(value["offset"]?.render() == "-9223372036854775808")
        #expect(value["raw"] == Self.sample.raw)
    }

    @Test func randomDoublesAndIntegersAreExact() throws {
        struct Numbers: Codable, Equatable {
            var d: [Double]
            var u: [UInt64]
            var i: [Int64]
        }
        var rng = SystemRandomNumberGenerator()
        var n = Numbers(d: [], u: [], i: [])
        for _ in 0..<2000 {
            let d = Double(bitPattern: rng.next())
            if d.isFinite { n.d.append(d) }
            n.u.append(rng.next())
            n.i.append(Int64(bitPattern: rng.next()))
        }
        let text = try JSONValueEncoder().encode(n).render()
        let back = try JSONValueDecoder().decode(Numbers.self, from: try JSONValue.parse(text))
        #expect(back.d.map(\.bitPattern) == n.d.map(\.bitPattern))
        #expect(back.u == n.u)
        #expect(back.i == n.i)
    }

    @Test func nonFiniteDoublesGoOutAsNullAndComeBackAsNaN() throws {
        struct S: Codable { var x: Double }
        let value = try JSONValueEncoder().encode(S(x: .nan))
        #expect(value.render() == #"{"x":null}"#)
        #expect(try JSONValueDecoder().decode(S.self, from: try JSONValue.parse(value.render())).x.isNaN)
    }

    @Test func errorsNameThePath() throws {
        func message(_ text: String) throws -> String {
            do {
                _ = try JSONValueDecoder().decode(Outer.self, from: try JSONValue.parse(text))
                return "decoded"
            } catch {
                return JSONValueDecoder.message(for: error)
            }
        }
        var good = try JSONValueEncoder().encode(Self.sample).objectValue!
        good["inner"] = .object(["name": .int(3), "weights": .array([])])
        #expect(try message(JSONValue.object(good).render()) == "inner.name: expected a string, found 3")

        good = try JSONValueEncoder().encode(Self.sample).objectValue!
        good["items"] = .array([.object(["name": .string("x"), "weights": .array([.int(1), .string("two")])])])
        #expect(try message(JSONValue.object(good).render()) == "items[0].weights[1]: expected a number, found \"two\"")

        good = try JSONValueEncoder().encode(Self.sample).objectValue!
        good["offset"] = .number(1.5)
        #expect(try message(JSONValue.object(good).render()) == "offset: expected a whole number that fits Int64, found 1.5")

        good = try JSONValueEncoder().encode(Self.sample).objectValue!
        good["id"] = .int(-1)
        #expect(try message(JSONValue.object(good).render()) == "id: expected a whole number that fits UInt64, found -1")

        good = try JSONValueEncoder().encode(Self.sample).objectValue!
        good["flag"] = nil
        #expect(try message(JSONValue.object(good).render()) == "flag: missing")

        good = try JSONValueEncoder().encode(Self.sample).objectValue!
        good["color"] = .string("blue")
        #expect(try message(JSONValue.object(good).render()).hasPrefix("color: "))

        #expect(try message("[]") == "expected an object, found []")
    }
}
