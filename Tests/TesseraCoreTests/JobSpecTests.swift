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

    @Test func overridesSetKeysAndTheirErrorsNameTheOption() throws {
        let text = "name: x\nkind: sampling\nalgorithm: ddim\nseed: 1\nshards: 2\nparams:\n  sweep: {beta: [0.1, 0.2]}\n"
        let spec = try JobSpec.parse(text, file: "f.yaml", overrides: [
            "depends_on=[7, 9]", "params.model.from_job=7", "params.sweep.beta[1]=0.5", "shards=3", "name=renamed",
        ])
        #expect(spec.dependsOn == [7, 9] && spec.shards == 3 && spec.name == "renamed")
        #expect(spec.params["model"]?["from_job"]?.intValue == 7)
        #expect(spec.params["sweep"]?["beta"] == .array([.number(0.1), .number(0.5)]))
        // Later overrides win; the file is otherwise untouched.
        #expect(try JobSpec.parse(text, file: "f.yaml", overrides: ["seed=2", "seed=3"]).seed == 3)
        func err(_ overrides: [String]) -> String? {
            do { _ = try JobSpec.parse(text, file: "f.yaml", overrides: overrides); return nil } catch let e as SpecError {
                return e.description
            } catch { return nil }
        }
        #expect(err(["shards=0"])?.hasPrefix("f.yaml: --set shards: shards must be between 1") == true, "\(err(["shards=0"]) ?? "")")
        #expect(err(["depends_on=[-1]"])?.hasPrefix("f.yaml: --set depends_on: depends_on entries must be positive") == true)
        #expect(err(["noequals"]) == "f.yaml: --set noequals: expected PATH=VALUE, e.g. params.model.from_job=7")
        #expect(err(["params.sweep.beta[5]=1"]) == "f.yaml: --set params.sweep.beta[5]: there is no list element [5] to set")
        #expect(err(["name.first=a"]) == "f.yaml: --set name.first: 'first' is inside a value that is not a mapping")
        #expect(err(["params..x=1"])?.contains("not a key path") == true)
        // An error elsewhere still names its line.
        #expect(err(["params.model.from_job=7", "colour=blue"])?.hasPrefix("f.yaml: --set colour: unknown key 'colour'") == true)
        do {
            _ = try JobSpec.parse("name: x\nkind: sampling\nalgorithm: ddim\nseed: -1\n", file: "g.yaml", overrides: ["shards=2"])
            Issue.record("seed -1 must be refused")
        } catch let e as SpecError {
            #expect(e.description.hasPrefix("g.yaml:4: seed must be"), "\(e)")
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
