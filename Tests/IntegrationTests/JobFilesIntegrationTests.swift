// Files a job brings (`files:`, docs/jobspec.md) through the real system: `tessera submit` checks a file with the
// algorithm and uploads it (`blob.upload`), the coordinator stores it content-addressed and checks it again, every
// worker fetches it by sha256, and the merge reads it too. A bad file is refused with every malformed line and
// nothing is stored; a file already stored is not sent again; the wire refuses specs naming files it lacks.

import Foundation
import LibPQ
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct JobFilesIntegrationTests {
    static func sha256(_ path: String) throws -> String {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/sha256sum")
        p.arguments = [path]
        let out = Pipe()
        p.standardOutput = out
        try p.run()
        p.waitUntilExit()
        return String(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self).prefix(64))
    }

    static func spec(file: String) -> String {
        """
        name: dpo-from-file
        kind: preference
        algorithm: dpo
        seed: 3
        shards: 2
        files: {pairs: \(file)}
        params:
          sweep: {seed: [3, 4]}
          problem: {contexts: 3, vocab: 4, length: 1}
          beta: 0.5
          policy: {hidden: []}
          data: {source: file, file: pairs}
          steps: 300
          learning_rate: 0.05
          log_every: 100
        """
    }

    /// Every ordered pair of every context, 1 to 4 times.
    static var pairs: String {
        var lines: [String] = []
        for x in 0..<3 {
            for i in 0..<4 {
                for j in 0..<4 where i != j {
                    for _ in 0..<(1 + (x + i * 3 + j) % 4) { lines.append("{\"context\": \(x), \"chosen\": [\(i)], \"rejected\": [\(j)]}") }
                }
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }

    @Test func aJobBringsAFileThatEveryWorkerFetchesBySHA256() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let specDir = "\(c.dir)/experiment"
        try FileManager.default.createDirectory(atPath: "\(specDir)/data", withIntermediateDirectories: true)
        try Self.pairs.write(toFile: "\(specDir)/data/pairs.jsonl", atomically: true, encoding: .utf8)
        try Self.spec(file: "data/pairs.jsonl").write(toFile: "\(specDir)/dpo.yaml", atomically: true, encoding: .utf8)
        let sha = try Self.sha256("\(specDir)/data/pairs.jsonl")
        let blob = "\(c.dir)/data/checkpoints/\(sha.prefix(2))/\(sha)"

        // Submitted from another directory: the path is relative to the spec file.
        let sub = try c.cli(["submit", "\(specDir)/dpo.yaml"])
        #expect(sub.status == 0, "\(sub.stderr)")
        #expect(sub.stderr.contains("files.pairs: uploaded data/pairs.jsonl"), "\(sub.stderr)")
        let job = try #require(Int(sub.stdout.trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(FileManager.default.contents(atPath: blob) == FileManager.default.contents(atPath: "\(specDir)/data/pairs.jsonl"))
        let wait = try c.cli(["wait", String(job), "--timeout", "300"])
        #expect(wait.status == 0, "\(wait.stdout)\(wait.stderr)")

        // The stored spec names the file by path, sha256 and size.
        let stored = try c.query("SELECT spec->'files'->'pairs'->>'sha256', (spec->'files'->'pairs'->>'size')::bigint, spec->'files'->'pairs'->>'path' FROM tessera_jobs WHERE id = $1", [.int(Int64(job))])
        #expect(stored.string(0, 0) == sha && stored.string(0, 2) == "data/pairs.jsonl")
        #expect(stored.string(0, 1) == String(Self.pairs.utf8.count))
        // Both points trained on the file (the seed changes nothing here: full batch, a zero-initialised linear
        // policy): the same figures, bit for bit, from two workers that each fetched it.
        let result = try #require(try c.json(["result", String(job)]) as? [String: Any])
        let points = try #require(result["points"] as? [[String: Any]])
        let kl = points.map { $0["kl_to_ref"] as? Double ?? -1 }
        #expect(points.count == 2 && kl[0] == kl[1] && kl[0] > 0, "\(points)")
        let logs = try c.cli(["logs", String(job)])
        #expect(logs.stdout.contains("fetching files.pairs (data/pairs.jsonl, \(Self.pairs.utf8.count) bytes)"), "\(logs.stdout.prefix(2000))")

        // The same file again is not sent again.
        let again = try c.cli(["submit", "\(specDir)/dpo.yaml"])
        #expect(again.status == 0 && again.stderr.contains("files.pairs: data/pairs.jsonl is stored already"), "\(again.stderr)")

        // A bad file: every malformed line, nothing uploaded, no job stored.
        let jobsBefore = try c.query("SELECT count(*) FROM tessera_jobs").string(0, 0)
        let bad = Self.pairs + "{\"context\": 9, \"chosen\": [1], \"rejected\": [2]}\n{\"context\": 0, \"chosen\": [1]}\nnot json\n"
        try bad.write(toFile: "\(specDir)/data/bad.jsonl", atomically: true, encoding: .utf8)
        try Self.spec(file: "data/bad.jsonl").write(toFile: "\(specDir)/bad.yaml", atomically: true, encoding: .utf8)
        let refused = try c.cli(["submit", "\(specDir)/bad.yaml"])
        let first = Self.pairs.split(separator: "\n").count + 1
        #expect(refused.status == 1, "\(refused.stdout)")
        for line in first..<(first + 3) { #expect(refused.stderr.contains("data/bad.jsonl:\(line): "), "line \(line): \(refused.stderr)") }
        #expect(refused.stderr.contains("3 malformed lines (files.pairs); nothing was uploaded or stored"), "\(refused.stderr)")
        let badSHA = try Self.sha256("\(specDir)/data/bad.jsonl")
        #expect(!FileManager.default.fileExists(atPath: "\(c.dir)/data/checkpoints/\(badSHA.prefix(2))/\(badSHA)"))
        #expect(try c.query("SELECT count(*) FROM tessera_jobs").string(0, 0) == jobsBefore)
        let missing = try c.cli(["submit", "\(specDir)/dpo.yaml", "--set", "files.pairs=data/nope.jsonl"])
        #expect(missing.status == 1 && missing.stderr.contains("there is no file \(specDir)/data/nope.jsonl"), "\(missing.stderr)")
    }

    /// examples/rl-rloo-byo.yaml as shipped (RLOO on a problem brought as a safetensors file) and DPO on the exact
    /// population loss of the same file: both reach the brought problem's Gibbs optimum and the same frontier point,
    /// and each result names the file by sha256. examples/pref-dpo-file.yaml (DPO on a JSONL of pairs) runs as
    /// shipped too.
    @Test func rlooAndDPOOnABroughtProblemCoincide() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let world = "\(IntegrationEnv.repoRoot)/examples/data/toy-world.safetensors"
        let rloo = try c.submit(IntegrationEnv.example("rl-rloo-byo.yaml"))
        let dpoSpec = """
            name: dpo-byo
            kind: preference
            algorithm: dpo
            seed: 7
            files: {world: \(world)}
            params:
              problem: {file: world}
              beta: 0.5
              data: {source: population}
              steps: 1000
              learning_rate: 0.02
            """
        let dpo = try c.submit(text: dpoSpec, name: "dpo-byo.yaml")
        let pairs = try c.submit(IntegrationEnv.example("pref-dpo-file.yaml"))
        for job in [rloo, dpo, pairs] {
            let wait = try c.cli(["wait", String(job), "--timeout", "600"])
            #expect(wait.status == 0, "job \(job): \(wait.stdout) \(wait.stderr)")
        }
        let sha = try Self.sha256(world)
        var points: [[String: Any]] = []
        for job in [rloo, dpo] {
            let result = try #require(try c.json(["result", String(job)]) as? [String: Any])
            let problem = try #require(result["problem"] as? [String: Any])
            let file = try #require(problem["file"] as? [String: Any])
            #expect(file["sha256"] as? String == sha && file["name"] as? String == "world", "\(problem)")
            #expect(problem["contexts"] as? Int == 4 && problem["vocab"] as? Int == 6)
            let point = try #require((result["points"] as? [[String: Any]])?.first)
            let kl = try #require(point["kl_to_optimum"] as? Double)
            print("job \(job) on the brought problem: KL to its Gibbs optimum \(kl), frontier distance \(point["frontier_distance"]!)")
            #expect(kl < 1e-3)
            points.append(point)
        }
        let dk = (points[0]["kl_to_ref"] as! Double) - (points[1]["kl_to_ref"] as! Double)
        let dr = (points[0]["expected_reward"] as! Double) - (points[1]["expected_reward"] as! Double)
        #expect((dk * dk + dr * dr).squareRoot() < 1e-2)
    }

    @Test func theWireRefusesFilesItDoesNotHaveAndUploadsResume() throws {
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        func spec(_ files: [String: Any]) -> [String: Any] {
            [
                "name": "raw", "kind": "preference", "algorithm": "dpo", "seed": 1, "files": files,
                "params": ["problem": ["contexts": 3, "vocab": 4, "length": 1], "data": ["source": "file", "file": "pairs"]],
            ]
        }
        // A spec whose file has no sha256 (not uploaded by a client that does not know files) is refused.
        let unresolved = try c.request("submit", ["spec": spec(["pairs": "p.jsonl"])])
        #expect(unresolved.status == 203 && unresolved.body.contains("has no sha256 and size"), "\(unresolved.body)")
        let bytes = Array(Self.pairs.utf8)
        let dir = "\(c.dir)/raw"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try Self.pairs.write(toFile: "\(dir)/p.jsonl", atomically: true, encoding: .utf8)
        let sha = try Self.sha256("\(dir)/p.jsonl")
        let named: [String: Any] = ["pairs": ["path": "p.jsonl", "sha256": sha, "size": bytes.count]]
        let notUploaded = try c.request("submit", ["spec": spec(named)])
        #expect(notUploaded.status == 203 && notUploaded.body.contains("the coordinator has no blob \(sha)"), "\(notUploaded.body)")

        func upload(_ offset: Int, _ range: Range<Int>, sha256: String = sha) throws -> (UInt16, String) {
            try c.request("blob.upload", [
                "sha256": sha256, "size": bytes.count, "offset": offset,
                "data": Data(bytes[range]).base64EncodedString(),
            ])
        }
        // Ranges in order, with a resend and a gap: the reply always says how much has arrived.
        let half = bytes.count / 2
        let a = try upload(0, 0..<100)
        #expect(a.0 == 0 && a.1.contains("\"received\":100") && a.1.contains("\"stored\":false"), "\(a.1)")
        let gap = try upload(half, half..<bytes.count)
        #expect(gap.0 == 0 && gap.1.contains("\"received\":100"), "\(gap.1)")
        let resend = try upload(0, 0..<100)
        #expect(resend.0 == 0 && resend.1.contains("\"received\":100"), "\(resend.1)")
        let b = try upload(100, 100..<bytes.count)
        #expect(b.0 == 0 && b.1.contains("\"stored\":true"), "\(b.1)")
        let done = try c.request("blob.upload", ["sha256": sha, "size": bytes.count, "offset": 0, "data": ""])
        #expect(done.0 == 0 && done.1.contains("\"stored\":true"), "\(done.1)")
        let wrongSize = try c.request("blob.upload", ["sha256": sha, "size": 3, "offset": 0, "data": ""])
        #expect(wrongSize.0 == 200 && wrongSize.1.contains("is stored with \(bytes.count) bytes, not 3"), "\(wrongSize.1)")
        // Bytes that are not the named blob are refused when the last range arrives, and nothing is stored.
        let liar = String(repeating: "ab", count: 32)
        let lie = try upload(0, 0..<bytes.count, sha256: liar)
        #expect(lie.0 == 200 && lie.1.contains("sha256 mismatch"), "\(lie.1)")
        #expect(!FileManager.default.fileExists(atPath: "\(c.dir)/data/checkpoints/ab/\(liar)"))
        let badRequest = try c.request("blob.upload", ["sha256": sha, "size": bytes.count, "offset": 0, "data": "%%%"])
        #expect(badRequest.0 == 200 && badRequest.1.contains("must be base64"), "\(badRequest.1)")
        // Now the spec is accepted, and its contents checked: a file that is not pairs is refused with its lines.
        let accepted = try c.request("submit", ["spec": spec(named)])
        #expect(accepted.0 == 0 && accepted.1.contains("job_id"), "\(accepted.1)")
        let junk = Array("hello\n".utf8)
        let junkSHA = try { () throws -> String in
            try "hello\n".write(toFile: "\(dir)/junk", atomically: true, encoding: .utf8)
            return try Self.sha256("\(dir)/junk")
        }()
        let up = try c.request("blob.upload", ["sha256": junkSHA, "size": junk.count, "offset": 0, "data": Data(junk).base64EncodedString()])
        #expect(up.0 == 0 && up.1.contains("\"stored\":true"))
        let junkSpec = try c.request("submit", ["spec": spec(["pairs": ["path": "junk", "sha256": junkSHA, "size": junk.count]])])
        #expect(junkSpec.0 == 203 && junkSpec.1.contains("junk:1: not a JSON object"), "\(junkSpec.1)")
    }
}
