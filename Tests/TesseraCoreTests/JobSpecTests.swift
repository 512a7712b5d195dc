import Foundation
import Testing
import TesseraCore

@Suite struct JobSpecTests {
    static let ring = """
        name: ddim-ring
        kind: sampling
        algorithm: ddim
        seed: 7
        shards: 4
        params:
          target: {type: gmm, means: [[2,0],[1.414,1.414],[0,2],[-1.414,1.414],[-2,0],[-1.414,-1.414],[0,-2],[1.414,-1.414]], stds: [0.2,0.2,0.2,0.2,0.2,0.2,0.2,0.2]}
          schedule: {type: linear, beta_start: 0.0001, beta_end: 0.02, steps: 1000}
          sampling_steps: 50
          eta: 0.0
          samples: 100000
          keep_samples: true
        """

    @Test func parsesTheIssueExample() throws {
        let spec = try JobSpec.parse(Self.ring, file: "ring.yaml")
        #expect(spec.name == "ddim-ring")
        #expect(spec.kind == .sampling)
        #expect(spec.algorithm == "ddim")
        #expect(spec.seed == 7)
        #expect(spec.shards == 4)
        #expect(spec.priority == 0)
        #expect(spec.maxAttempts == 3)
        #expect(spec.params["samples"]?.intValue == 100_000)
        #expect(spec.params["keep_samples"]?.boolValue == true)
        #expect(spec.params["schedule"]?["beta_start"]?.doubleValue == 0.0001)
        #expect(spec.source.lines["params.sampling_steps"] == 9)
    }

    @Test func storedFormRoundTrips() throws {
        let spec = try JobSpec.parse(Self.ring, file: "ring.yaml")
        let bytes = spec.json.utf8Bytes
        let back = try JobSpec.fromStored(bytes)
        #expect(back == spec)
        #expect(back.json.render() == spec.json.render())
    }

    @Test func unknownTopLevelKeyNamesItsLine() {
        let text = "name: x\nkind: sampling\nalgorithm: ddim\nseed: 1\ncolour: blue\n"
        #expect(throws: SpecError(file: "f.yaml", line: 5, path: "colour", message: "unknown key 'colour'; allowed keys are \(JobSpec.topLevelKeys.joined(separator: ", "))")) {
            try JobSpec.parse(text, file: "f.yaml")
        }
    }

    @Test func badValuesNameTheirLine() throws {
        func err(_ text: String) -> SpecError? {
            do { _ = try JobSpec.parse(text, file: "s.yaml"); return nil } catch let e as SpecError { return e } catch { return nil }
        }
        #expect(err("name: x\nkind: train\nalgorithm: a\nseed: 1\n")?.description.hasPrefix("s.yaml:2: unknown kind 'train'") == true)
        #expect(err("name: x\nkind: rl\nalgorithm: a\nseed: -4\n")?.description.hasPrefix("s.yaml:4: seed must be") == true)
        #expect(err("name: x\nkind: rl\nalgorithm: a\nseed: 1\nshards: 0\n")?.description.hasPrefix("s.yaml:5: shards must be between 1") == true)
        #expect(err("name: x\nkind: rl\nalgorithm: a\n")?.description.hasPrefix("s.yaml:1: missing required key 'seed'") == true)
        #expect(err("name: x\nkind: [rl\n")?.description.hasPrefix("s.yaml:") == true)
        #expect(err("")?.description == "s.yaml: the spec is empty")
        #expect(err("name: x\nname: y\n")?.description.hasPrefix("s.yaml:2: duplicate key 'name'") == true)
    }

    @Test func jsonSpecsParseToo() throws {
        let spec = try JobSpec.parse(#"{"name": "j", "kind": "rl", "algorithm": "rloo", "seed": 18446744073709551615}"#, file: "j.json")
        #expect(spec.seed == UInt64.max)
        #expect(try JobSpec.fromStored(spec.json.utf8Bytes).seed == UInt64.max)
    }

    @Test func paramsReaderLocatesNestedErrors() throws {
        let spec = try JobSpec.parse(Self.ring.replacingOccurrences(of: "eta: 0.0", with: "eta: fast"), file: "r.yaml")
        #expect(throws: SpecError.self) { try spec.paramsReader.double("eta") }
        do { _ = try spec.paramsReader.double("eta") } catch let e as SpecError { #expect(e.line == 10) }
        let target = try spec.paramsReader.object("target")
        do { _ = try target.double("nope") } catch let e as SpecError { #expect(e.line == 7) }
    }
}

@Suite struct JSONTests {
    @Test func doublesRoundTripBitExactly() throws {
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<20_000 {
            let bits = rng.next() as UInt64
            let d = Double(bitPattern: bits)
            guard d.isFinite else { continue }
            let back = try JSONValue.parse(JSONValue.number(d).render())
            #expect(back.doubleValue?.bitPattern == d.bitPattern)
        }
    }

    @Test func parsesAndRendersStructures() throws {
        let text = #"{"a":[1,2.5,-3e-7,true,null],"b":{"c":"x\n\"y\"\u00e9"},"d":[]}"#
        let v = try JSONValue.parse(text)
        #expect(v["b"]?["c"]?.stringValue == "x\n\"y\"é")
        #expect(try JSONValue.parse(v.render()) == v)
        #expect(try JSONValue.parse(v.render(pretty: true)) == v)
    }

    @Test func rejectsGarbage() {
        for bad in ["", "{", "[1,]", "{\"a\"}", "tru", "\"abc", "1 2", "{\"a\":1,\"a\":2}", "[\"\\q\"]", "nan"] {
            #expect(throws: JSONError.self) { try JSONValue.parse(bad) }
        }
    }
}
