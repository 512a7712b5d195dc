// Bad input end to end (issue 10): real PostgreSQL, a coordinator and a worker as processes, the CLI as users run it.
// A job whose `depends_on` job is cancelled fails at once with that reason (it used to wait in `queued` forever);
// `submit` refuses a dependency that can never succeed and a `params.model.from_job` that is missing or not a
// training job; an alias bomb is refused by `tessera submit` in well under a second, in a process capped at 1 GB of
// address space (the old parser grew past 2.8 GB on it).

import Foundation
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct JobDependencyTests {
    func state(_ c: Cluster, _ job: Int) throws -> (state: String?, error: String?) {
        let j = try #require(try c.json(["status", String(job)]) as? [String: Any])
        return (j["state"] as? String, j["error"] as? String)
    }

    @Test func aCancelledDependencyFailsItsDependentsAndSubmitChecksWhatASpecReferences() throws {
        let c = try Cluster(workers: 1)
        defer { c.shutdown() }
        let slow = try c.submit(text: """
            name: slow
            kind: sampling
            algorithm: noop
            seed: 1
            params: {sleep_ms: 600000}
            """, name: "slow.yaml")
        let waiting = try c.submit(text: """
            name: waiting
            kind: sampling
            algorithm: noop
            seed: 1
            depends_on: [\(slow)]
            """, name: "waiting.yaml")
        let chained = try c.submit(text: """
            name: chained
            kind: sampling
            algorithm: noop
            seed: 1
            depends_on: [\(waiting)]
            """, name: "chained.yaml")
        #expect(try state(c, waiting).state == "queued")

        // from_job must be a ddpm-train job that exists; both are checked by the coordinator at submit.
        let learned = IntegrationEnv.example("sampling-ddim-learned.yaml")
        let wrong = try c.cli(["submit", learned, "--set", "depends_on=[\(slow)]", "--set", "params.model.from_job=\(slow)"])
        #expect(wrong.status != 0)
        #expect(wrong.stderr.contains("params.model.from_job: job \(slow) is a sampling/noop job; it must be sampling/ddpm-train"), "\(wrong.stderr)")
        let missing = try c.cli(["submit", learned, "--set", "depends_on=[9999]", "--set", "params.model.from_job=9999"])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("params.model.from_job: job 9999 does not exist"), "\(missing.stderr)")

        #expect(try c.cli(["cancel", String(slow)]).status == 0)
        let started = Date()
        let wait = try c.cli(["wait", String(chained), "--timeout", "30"])
        #expect(Date().timeIntervalSince(started) < 10, "wait took \(Date().timeIntervalSince(started)) s")
        #expect(wait.status != 0, "\(wait.stdout) \(wait.stderr)")
        #expect(try state(c, waiting) == ("failed", "depends_on job \(slow) was cancelled"))
        #expect(try state(c, chained) == ("failed", "depends_on job \(waiting) failed: depends_on job \(slow) was cancelled"))

        // A new job on the cancelled one is refused, nothing stored.
        let late = try c.cli(["submit", "-", "--json"], stdin: "name: late\nkind: sampling\nalgorithm: noop\nseed: 1\ndepends_on: [\(slow)]\n")
        #expect(late.status != 0)
        #expect(late.stderr.contains("depends_on: job \(slow) was cancelled, so this job could never start"), "\(late.stderr)")
        let jobs = try #require(try c.json(["status"]) as? [String: Any])
        #expect((jobs["jobs"] as? [Any])?.count == 3)
    }

    @Test func anAliasBombIsRefusedFastInBoundedMemory() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tessera-bomb-\(getpid())")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        var text = "name: bomb\nkind: sampling\nalgorithm: noop\nseed: 1\nparams:\n  l0: &l0 [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n"
        for i in 1...9 {
            text += "  l\(i): &l\(i) [" + Array(repeating: "*l\(i - 1)", count: 9).joined(separator: ",") + "]\n"
        }
        let path = dir.appendingPathComponent("bomb.yaml").path
        try text.write(toFile: path, atomically: true, encoding: .utf8)
        // ulimit -v: the address space of `tessera submit` (no coordinator needed: the spec is checked first).
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/bin/sh")
        p.arguments = ["-c", "ulimit -v 1048576; exec \"$0\" submit --dry-run \"$1\"", IntegrationEnv.binary, path]
        let err = Pipe()
        p.standardError = err
        p.standardOutput = FileHandle.nullDevice
        let started = Date()
        try p.run()
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        p.waitUntilExit()
        #expect(Date().timeIntervalSince(started) < 5)
        #expect(p.terminationStatus == 1)
        #expect(stderr.contains("\(path):6:7: YAML anchor '&l0' is not accepted in a job spec"), "\(stderr)")
    }
}
