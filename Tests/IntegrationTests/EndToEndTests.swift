// Issue 2's integration tests: real PostgreSQL, real processes over tcp loopback.

import Foundation
import LibPQ
import TesseraCompute
import Testing

@Suite(.serialized, .enabled(if: IntegrationEnv.ready, "needs TESSERA_TEST_DATABASE_URL and a built tessera (run ops/test)"))
struct EndToEndTests {
    @Test func ringExampleRunsToSucceededWithTwoWorkers() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(IntegrationEnv.example("sampling-ddim-ring.yaml"))
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "wait: \(wait.stdout) \(wait.stderr)\n\(c.log("coordinator"))")

        // The merged result has the documented keys and the issue's sample count.
        let result = try #require(try c.json(["result", String(job)]) as? [String: Any])
        for key in ["n", "mean", "cov", "mode_weights", "sw1", "mmd", "noise_floor"] {
            #expect(result[key] != nil, "result lacks \(key)")
        }
        #expect(result["n"] as? Int == 100_000)
        let weights = try #require(result["mode_weights"] as? [Double])
        #expect(weights.count == 8)
        #expect(abs(weights.reduce(0, +) - 1) < 1e-12)

        // Both workers took part, every shard has metric rows and stored blobs.
        let workersUsed = try c.query(
            "SELECT count(DISTINCT worker_id) AS n FROM tessera_events WHERE job_id = $1 AND kind = 'shard.leased'",
            [.int(Int64(job))]
        )
        #expect(workersUsed.int(0, "n") == 2)
        // `status JOB` names, for each finished shard, the worker that ran it: the one whose DONE was accepted.
        let jobStatus = try #require(try c.json(["status", String(job)]) as? [String: Any])
        let shown = try #require(jobStatus["shards"] as? [[String: Any]]).map { $0["worker"] as? String }
        let ran = try c.query(
            """
            SELECT w.name FROM tessera_events e JOIN tessera_workers w ON w.id = e.worker_id
            WHERE e.job_id = $1 AND e.kind = 'shard.succeeded' ORDER BY e.shard_idx
            """, [.int(Int64(job))])
        #expect(shown == (0..<ran.rowCount).map { ran[$0, "name"] }, "status shows \(shown)")
        let perShard = try c.query(
            """
            SELECT s.idx,
                   (SELECT count(*) FROM tessera_metrics m WHERE m.job_id = s.job_id AND m.shard_idx = s.idx) AS metrics,
                   (SELECT count(*) FROM tessera_checkpoints k WHERE k.job_id = s.job_id AND k.shard_idx = s.idx AND k.kind = 'samples') AS samples,
                   (SELECT count(*) FROM tessera_checkpoints k WHERE k.job_id = s.job_id AND k.shard_idx = s.idx AND k.kind = 'result') AS results
            FROM tessera_shards s WHERE s.job_id = $1 ORDER BY s.idx
            """,
            [.int(Int64(job))]
        )
        #expect(perShard.rowCount == 4)
        for i in 0..<perShard.rowCount {
            #expect(perShard.int(i, "metrics") == 150, "shard \(i): 3 metrics x 50 steps")
            #expect(perShard.int(i, "samples") == 1)
            #expect(perShard.int(i, "results") == 1)
        }

        // Pulled samples files parse as safetensors and together hold every sample once.
        var rows = 0
        for shard in 0..<4 {
            let path = "\(c.dir)/samples-\(shard).safetensors"
            let pull = try c.cli(["checkpoint", "pull", String(job), "--shard", String(shard), "-o", path])
            #expect(pull.status == 0, "\(pull.stderr)")
            let file = try SafeTensorsFile.read(path: path)
            let samples = try #require(file["samples"])
            #expect(samples.dtype == .F32)
            #expect(samples.shape.count == 2 && samples.shape[1] == 2)
            rows += samples.shape[0]
            #expect(try samples.float32Values().allSatisfy(\.isFinite))
        }
        #expect(rows == 100_000)

        // checkpoint list: every stored blob once, as the table holds them; the human form one row per blob.
        let listed = try #require(try c.json(["checkpoint", "list", String(job)]) as? [String: Any])
        let blobs = try #require(listed["blobs"] as? [[String: Any]])
        let stored = try c.query(
            "SELECT shard_idx, kind, step, sha256 FROM tessera_checkpoints WHERE job_id = $1 ORDER BY shard_idx, kind, step",
            [.int(Int64(job))])
        #expect(blobs.count == stored.rowCount && blobs.count == 8)
        #expect(blobs.map { $0["sha256"] as? String } == (0..<stored.rowCount).map { stored[$0, "sha256"] })
        #expect(blobs.map { $0["kind"] as? String } == (0..<stored.rowCount).map { stored[$0, "kind"] })
        let one = try #require(try c.json(["checkpoint", "list", String(job), "--shard", "2"]) as? [String: Any])
        #expect((one["blobs"] as? [[String: Any]])?.allSatisfy { $0["shard"] as? Int == 2 } == true)
        let table = try c.cli(["checkpoint", "list", String(job)])
        #expect(table.status == 0 && table.stdout.split(separator: "\n").count == 9, "\(table.stdout)")
        #expect(table.stdout.hasPrefix("SHARD") && table.stdout.contains("samples") && table.stdout.contains("KiB"))
        #expect(try c.cli(["checkpoint", "list", "999999"]).status == 4)

        // Status answers with shards, attempts and last metrics.
        let status = try #require(try c.json(["status", String(job)]) as? [String: Any])
        #expect(status["state"] as? String == "succeeded")
        let shards = try #require(status["shards"] as? [[String: Any]])
        #expect(shards.count == 4)
        #expect(shards.allSatisfy { ($0["last_metrics"] as? [String: Any])?["mean_sq_norm"] != nil })
    }

    @Test func mergedResultIsIdenticalFor1_3_And8Shards() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        var results: [Int: String] = [:]
        for shards in [1, 3, 8] {
            let job = try c.submit(text: ringSpec(shards: shards, keep: false), name: "ring-\(shards).yaml")
            let wait = try c.cli(["wait", String(job), "--timeout", "600"])
            #expect(wait.status == 0, "\(wait.stderr)")
            let r = try c.cli(["result", String(job), "--json"])
            #expect(r.status == 0)
            results[shards] = r.stdout
        }
        #expect(results[1] == results[3], "1 vs 3 shards differ")
        #expect(results[1] == results[8], "1 vs 8 shards differ")
        #expect(results[1]?.contains("\"n\":100000") == true)
    }

    @Test func badSpecIsRejectedWithFileAndLineAndStoresNothing() throws {
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        let bad = ringSpec(shards: 2).replacingOccurrences(of: "eta: 0.0", with: "eta: 3")
        let path = "\(c.dir)/bad.yaml"
        try bad.write(toFile: path, atomically: true, encoding: .utf8)
        let r = try c.cli(["submit", path])
        #expect(r.status != 0)
        #expect(r.stderr.contains("\(path):10: params.eta must be in [0.0, 1.0]"), "\(r.stderr)")

        let unknown = "name: x\nkind: sampling\nalgorithm: ddim\nseed: 1\ncolour: red\n"
        let r2 = try c.cli(["submit", "-"], stdin: unknown)
        #expect(r2.status != 0)
        #expect(r2.stderr.contains("<stdin>:5: unknown key 'colour'"), "\(r2.stderr)")

        let syntax = try c.cli(["submit", "-"], stdin: "name: [x\n")
        #expect(syntax.status != 0)
        #expect(syntax.stderr.contains("<stdin>:"), "\(syntax.stderr)")

        let jobs = try c.query("SELECT count(*) AS n FROM tessera_jobs")
        #expect(jobs.int(0, "n") == 0)
    }

    @Test func workerRejectsAnUnknownGemmBackend() throws {
        // A typo must not silently fall back to the default backend: the bits of trained networks depend on it.
        let r = try tessera(["worker", "--gemm", "openblass"])
        #expect(r.status == 64, "\(r.stderr)")
        #expect(r.stderr.contains("--gemm must be auto, avx2 or openblas, not 'openblass'"), "\(r.stderr)")
    }

    @Test func statusValidatesItsFiltersAndLimit() throws {
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        let small = ringSpec(shards: 1, samples: 4096, keep: false)
        let first = try c.submit(text: small)
        let second = try c.submit(text: small, name: "small2.yaml")
        let bogus = try c.cli(["status", "--state", "bogus"])
        #expect(bogus.status != 0 && bogus.stderr.contains("unknown state 'bogus'"), "\(bogus.stderr)")
        let zero = try c.cli(["status", "--limit", "0"])
        #expect(zero.status != 0 && zero.stderr.contains("--limit"), "\(zero.stderr)")
        func ids(_ args: [String]) throws -> [Int] {
            let list = try #require(try c.json(["status"] + args) as? [String: Any])
            return try #require(list["jobs"] as? [[String: Any]]).compactMap { $0["id"] as? Int }
        }
        #expect(try ids(["--state", "queued"]) == [second, first])
        #expect(try ids(["--state", "succeeded"]).isEmpty)
        #expect(try ids(["--limit", "1"]) == [second])
        // The coordinator checks the same, for clients other than this CLI (200: badRequest, SPEC §8).
        let raw = try c.request("status", ["state": "bogus"])
        #expect(raw.status == 200 && raw.body.contains("unknown job state 'bogus'"), "\(raw)")
        let rawZero = try c.request("status", ["limit": 0])
        #expect(rawZero.status == 200 && rawZero.body.contains("'limit'"), "\(rawZero)")
    }

    @Test func waitExitCodes() throws {
        // No workers yet: the job cannot finish, so wait times out (2); cancelled gives 1; succeeded gives 0.
        let c = try Cluster(workers: 0)
        defer { c.shutdown() }
        let small = ringSpec(shards: 1, samples: 4096, keep: false)
        let job = try c.submit(text: small)
        let timeout = try c.cli(["wait", String(job), "--timeout", "1"])
        #expect(timeout.status == 2, "\(timeout.stderr)")
        #expect(timeout.stderr.contains("timed out"))
        // Not a terminal: a plain progress line (the first at once, then every 10 s), no carriage returns.
        #expect(timeout.stderr.contains("job \(job):   0%  shards 0/1  queued"), "\(timeout.stderr)")
        #expect(!timeout.stderr.contains("\r"))

        let cancel = try c.cli(["cancel", String(job)])
        #expect(cancel.status == 0)
        let cancelled = try c.cli(["wait", String(job), "--timeout", "30"])
        #expect(cancelled.status == 1)
        #expect(cancelled.stdout.contains("cancelled"))
        let result = try c.cli(["result", String(job)])
        #expect(result.status == 1)

        try c.startWorker("late")
        let job2 = try c.submit(text: small, name: "small2.yaml")
        let ok = try c.cli(["wait", String(job2), "--timeout", "120"])
        #expect(ok.status == 0, "\(ok.stderr)")

        // retry: the cancelled job runs again and succeeds; a succeeded one is refused with the reason.
        let retry = try c.cli(["retry", String(job)])
        #expect(retry.status == 0 && retry.stdout.contains("job \(job) queued again (1 shard(s)); it is queued"), "\(retry.stdout)\(retry.stderr)")
        let retried = try c.cli(["wait", String(job), "--timeout", "120"])
        #expect(retried.status == 0, "\(retried.stdout)\(retried.stderr)")
        let shard = try c.query("SELECT state::text AS s, failures FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        #expect(shard[0, "s"] == "succeeded" && shard.int(0, "failures") == 0)
        let events = try c.query("SELECT count(*)::int8 AS n FROM tessera_events WHERE job_id = $1 AND kind = 'job.retried'", [.int(Int64(job))])
        #expect(events.int(0, "n") == 1)
        let again = try c.cli(["retry", String(job)])
        #expect(again.status == 1 && again.stderr.contains("job \(job) is succeeded: only a failed or cancelled job can be retried"), "\(again.stderr)")
        #expect(try c.cli(["retry", "999999"]).stderr.contains("no job 999999"))
        // status --watch of a finished job shows it once and ends; of the list, it refreshes until stopped.
        let watched = try c.cli(["status", String(job), "--watch", "--interval", "0.2"])
        #expect(watched.status == 0 && watched.stdout.contains("succeeded"), "\(watched.stdout)\(watched.stderr)")
        #expect(try c.cli(["status", "--watch", "--json"]).status == 64)
        let list = try spawnTessera(["status", "--watch", "--interval", "0.2", "--coordinator", c.endpoint], log: "\(c.dir)/watch.log")
        Thread.sleep(forTimeInterval: 1.5)
        kill(list.processIdentifier, SIGTERM)
        list.waitUntilExit()
        let views = ((try? String(contentsOfFile: "\(c.dir)/watch.log", encoding: .utf8)) ?? "").components(separatedBy: "ID  NAME").count - 1
        #expect(views >= 3, "\(views) refreshes in 1.5 s at 0.2 s")

        // compare: one column per job; the two runs of one spec agree on every result key.
        let cmp = try c.cli(["compare", String(job), String(job2)])
        #expect(cmp.status == 0, "\(cmp.stderr)")
        let lines = cmp.stdout.split(separator: "\n").map(String.init)
        #expect(lines.first?.range(of: #"^JOB\s+\#(job)\s+\#(job2)$"#, options: .regularExpression) != nil, "\(cmp.stdout)")
        for key in ["name", "algorithm", "state", "n", "mean", "sw1"] {
            let row = try #require(lines.first { $0.hasPrefix(key + " ") }, "no \(key) row in \(cmp.stdout)")
            let cells = row.dropFirst(key.count).split(separator: " ", omittingEmptySubsequences: true)
            if key != "mean" { #expect(cells.count == 2 && cells[0] == cells[1], "\(row)") }
        }
        let cmpJSON = try #require(try c.json(["compare", String(job), String(job2)]) as? [String: Any])
        let cols = try #require(cmpJSON["jobs"] as? [[String: Any]])
        #expect(cols.map { $0["id"] as? Int } == [job, job2])
        #expect((cols[0]["result"] as? [String: Any])?["sw1"] as? Double == (cols[1]["result"] as? [String: Any])?["sw1"] as? Double)
        #expect(try c.cli(["compare", String(job)]).status == 64)
        #expect(try c.cli(["compare", String(job), "999999"]).status == 4)

        // --json failures: the error as a JSON document on stdout as well.
        let jsonError = try c.cli(["status", "999999", "--json"])
        #expect(jsonError.status == 4 && jsonError.stderr.contains("no job 999999"), "\(jsonError.status) \(jsonError.stderr)")
        let doc = try JSONSerialization.jsonObject(with: Data(jsonError.stdout.utf8)) as? [String: Any]
        let err = doc?["error"] as? [String: Any]
        #expect(err?["message"] as? String == "no job 999999" && err?["exit_code"] as? Int == 4, "\(jsonError.stdout)")
        let unreachable = try tessera(["workers", "--json", "--coordinator", "tcp://127.0.0.1:1", "--request-timeout", "0.5"])
        #expect(unreachable.status == 3)
        #expect(((try? JSONSerialization.jsonObject(with: Data(unreachable.stdout.utf8))) as? [String: Any])?["error"] != nil, "\(unreachable.stdout)")

        // status filters: name glob, kind, algorithm, since, each validated.
        func ids(_ args: [String]) throws -> [Int] {
            let o = try c.json(["status"] + args) as? [String: Any]
            return ((o?["jobs"] as? [[String: Any]]) ?? []).compactMap { $0["id"] as? Int }
        }
        #expect(try ids(["--name", "ring-*"]) == [job2, job])
        #expect(try ids(["--name", "ring-?"]) == [job2, job])
        #expect(try ids(["--name", "other*"]).isEmpty)
        #expect(try ids(["--kind", "rl"]).isEmpty && ids(["--kind", "sampling"]) == [job2, job])
        #expect(try ids(["--algorithm", "ddim"]) == [job2, job] && ids(["--algorithm", "ddpm"]).isEmpty)
        #expect(try ids(["--since", "1h"]) == [job2, job] && ids(["--since", "2000-01-01"]) == [job2, job])
        #expect(try ids(["--since", "2999-01-01T00:00:00Z"]).isEmpty)
        #expect(try c.cli(["status", "--name", "other*"]).stdout.contains("no jobs"))
        for (args, message) in [
            (["--kind", "image"], "unknown kind 'image'; known: sampling, rl, preference"),
            (["--algorithm", "ddim", "--kind", "rl"], "unknown algorithm 'ddim' of kind rl; known:"),
            (["--since", "yesterday"], "--since must be an age such as 90s"),
            (["1", "--name", "x"], "they do not go with JOB"),
        ] {
            let r = try c.cli(["status"] + args)
            #expect(r.status == 64 && r.stderr.contains(message), "\(args): \(r.stderr)")
        }
        // Over the wire: a glob's other characters are literal (`_` is not LIKE's any-character), and bad values
        // are refused by the coordinator too.
        #expect(try c.request("status", ["name": "ring_1"]).body == "{\"jobs\":[]}")
        #expect(try c.request("status", ["kind": "image"]).status == 200)
        #expect(try c.request("status", ["algorithm": "nope"]).status == 200)
        #expect(try c.request("status", ["since": "today"]).status == 200)

        let missing = try c.cli(["wait", "999999", "--timeout", "5"])
        #expect(missing.status != 0 && missing.status != 2)
        #expect(missing.stderr.contains("no job 999999"))
    }

    @Test func cancellingARunningJobStopsItsShardsAndFreesTheWorkers() throws {
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(text: ringSpec(shards: 2, samples: 40_000, algorithm: "ddpm", steps: 1000, keep: false), name: "long.yaml")
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let r = try c.query("SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND state = 'leased' AND step > 0", [.int(Int64(job))])
            if r.int(0, "n") == 2 { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        let cancel = try c.json(["cancel", String(job)]) as? [String: Any]
        #expect(cancel?["stopped_shards"] as? Int == 2)
        #expect(try c.cli(["wait", String(job), "--timeout", "30"]).status == 1)
        let states = try c.query("SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND state = 'cancelled'", [.int(Int64(job))])
        #expect(states.int(0, "n") == 2)
        // Both workers stopped the cancelled shards: a new small job gets both slots and finishes.
        let next = try c.submit(text: ringSpec(shards: 2, samples: 8192, keep: false), name: "next.yaml")
        #expect(try c.cli(["wait", String(next), "--timeout", "60"]).status == 0)
        let used = try c.query("SELECT count(DISTINCT worker_id) AS n FROM tessera_events WHERE job_id = $1 AND kind = 'shard.leased'", [.int(Int64(next))])
        #expect(used.int(0, "n") == 2)
        // And no worker still reports a cancelled shard as running.
        let w = try #require(try c.json(["workers"]) as? [String: Any])
        let workers = try #require(w["workers"] as? [[String: Any]])
        #expect(workers.allSatisfy { ($0["running"] as? [Any])?.isEmpty == true })
    }

    @Test func killedWorkerLosesNothing() throws {
        // A shard whose worker is SIGKILLed goes back to the queue and finishes elsewhere; the merged result is the
        // one an undisturbed run gives, and the lost attempt consumed no max_attempts.
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        // 20,000 samples a shard: long enough to be killed mid-shard (it is killed as soon as both shards have
        // reported progress, which heartbeats carry once a second), short enough that the two runs of the spec (the
        // second on one worker) take seconds. 4,000 were too few once the samplers ran optimised in debug builds:
        // a shard finished within a second, before any heartbeat showed it running.
        let spec = ringSpec(shards: 2, samples: 40_000, algorithm: "ddpm", steps: 1000, keep: false)
        let job = try c.submit(text: spec, name: "victim.yaml")
        // Wait until both shards are running with some progress, then kill worker w1.
        let deadline = Date().addingTimeInterval(120)
        var bothRunning = false
        while Date() < deadline, !bothRunning {
            let r = try c.query(
                "SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND state = 'leased' AND step > 0",
                [.int(Int64(job))]
            )
            bothRunning = r.int(0, "n") == 2
            if !bothRunning { Thread.sleep(forTimeInterval: 0.05) }
        }
        #expect(bothRunning, "both shards never ran with progress at once: the kill cannot land mid-shard")
        c.signalWorker("w1", SIGKILL)
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "\(wait.stderr)\n\(c.log("coordinator"))")
        let shards = try c.query(
            "SELECT idx, attempt, failures FROM tessera_shards WHERE job_id = $1 ORDER BY idx", [.int(Int64(job))]
        )
        #expect((0..<shards.rowCount).contains { shards.int($0, "attempt")! >= 2 }, "one shard was re-leased")
        #expect((0..<shards.rowCount).allSatisfy { shards.int($0, "failures") == 0 }, "infrastructure loss is free")
        let lost = try c.query("SELECT count(*) AS n FROM tessera_events WHERE job_id = $1 AND kind = 'shard.requeued'", [.int(Int64(job))])
        #expect(lost.int(0, "n")! >= 1)

        // Same spec, undisturbed, on the remaining worker: identical result.
        let again = try c.submit(text: spec.replacingOccurrences(of: "name: ring-2", with: "name: ring-2-again"), name: "again.yaml")
        #expect(try c.cli(["wait", String(again), "--timeout", "600"]).status == 0)
        let a = try c.cli(["result", String(job), "--json"]).stdout
        let b = try c.cli(["result", String(again), "--json"]).stdout
        #expect(!a.isEmpty && a == b)
    }

    @Test func drainedWorkerHandsBackItsShardAndExitsZero() throws {
        // SIGTERM = drain: no new shards; the running one may finish for --drain-timeout (5 s here, too short for
        // it), then it is handed back (retryable: no attempt consumed) and the worker exits 0. The shards sleep 15 s
        // (noop), so the drain cannot outlast them however fast the build computes (a 20,000-sample DDPM shard once
        // did: it finished inside the 5 s once debug builds ran the samplers optimised).
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(
            text: "name: drain\nkind: rl\nalgorithm: noop\nseed: 1\nshards: 2\nparams: {sleep_ms: 15000}\n", name: "drain.yaml")
        // Until each worker reports one of them running (heartbeats; a lease alone may be a prefetch).
        let deadline = Date().addingTimeInterval(120)
        var bothRunning = false
        while Date() < deadline, !bothRunning {
            let w = try c.json(["workers"]) as? [String: Any]
            let alive = (w?["workers"] as? [[String: Any]] ?? []).filter { $0["state"] as? String == "alive" }
            bothRunning = alive.filter { ($0["running"] as? [Any])?.count == 1 }.count == 2
            if !bothRunning { Thread.sleep(forTimeInterval: 0.1) }
        }
        #expect(bothRunning, "both workers never ran a shard at once")
        c.signalWorker("w1", SIGTERM)
        let w1 = try #require(c.workers["w1"])
        w1.waitUntilExit()
        #expect(w1.terminationStatus == 0, "\(c.log("w1"))")
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "\(wait.stderr)")
        let handedBack = try c.query(
            "SELECT count(*) AS n FROM tessera_events WHERE job_id = $1 AND kind = 'shard.retry' AND detail->>'reason' = 'worker drained'",
            [.int(Int64(job))]
        )
        #expect(handedBack.int(0, "n") == 1)
        let failures = try c.query("SELECT sum(failures) AS n FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        #expect(failures.int(0, "n") == 0)
        let gone = try c.query("SELECT state::text AS s FROM tessera_workers WHERE name = 'w1' ORDER BY id DESC LIMIT 1")
        #expect(gone[0, "s"] == "gone")
    }

    @Test func coordinatorRestartKeepsRunningShards() throws {
        // SIGTERM the coordinator mid-job and start it again on the same database and endpoint: workers
        // re-register, keep their shards, and the job succeeds.
        let c = try Cluster(workers: 2)
        defer { c.shutdown() }
        let job = try c.submit(text: ringSpec(shards: 2, samples: 40_000, algorithm: "ddpm", steps: 1000, keep: false), name: "restart.yaml")
        let deadline = Date().addingTimeInterval(120)
        while Date() < deadline {
            let r = try c.query("SELECT count(*) AS n FROM tessera_shards WHERE job_id = $1 AND step > 0", [.int(Int64(job))])
            if r.int(0, "n") == 2 { break }
            Thread.sleep(forTimeInterval: 0.05)
        }
        c.stopCoordinator(SIGTERM)
        Thread.sleep(forTimeInterval: 0.5)
        try c.startCoordinator()
        let wait = try c.cli(["wait", String(job), "--timeout", "600"])
        #expect(wait.status == 0, "\(wait.stderr)\n\(c.log("coordinator"))")
        let failures = try c.query("SELECT sum(failures) AS n FROM tessera_shards WHERE job_id = $1", [.int(Int64(job))])
        #expect(failures.int(0, "n") == 0)
    }

    @Test func coordinatorRefusesAnOutOfDateSchema() throws {
        let db = try PostgresTestDatabaseHelper.unmigrated()
        defer { db.drop() }
        let r = try tessera(["coordinator", "--database-url", db.url, "--bind", "tcp://127.0.0.1:*", "--data-dir", "/tmp/tessera-it-schema"])
        #expect(r.status != 0)
        #expect(r.stderr.contains("run `tessera migrate"), "\(r.stderr)")
        let nonLoopback = try tessera(["coordinator", "--database-url", db.url, "--bind", "tcp://0.0.0.0:5999"])
        #expect(nonLoopback.status != 0)
        #expect(nonLoopback.stderr.contains("binds only to loopback"))
    }
}

import TesseraTesting

enum PostgresTestDatabaseHelper {
    static func unmigrated() throws -> PostgresTestDatabase { try PostgresTestDatabase.create(migrate: false) }
}
