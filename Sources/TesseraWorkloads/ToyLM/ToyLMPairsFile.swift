// Preference pairs from a job file (`files:` + `params.data: {source: file, file: NAME}`, docs/jobspec.md): JSON
// Lines, one pair per line,
//
//     {"context": 3, "chosen": [4, 1], "rejected": [0, 2]}
//
// `context` is a context index 0 … M−1 of the toy LM's problem, `chosen` and `rejected` are responses of L tokens
// each in 0 … V−1 (token t of response y is (y / V^(L−1−t)) % V, ToyLMProblem.swift), and must differ. Blank lines
// are skipped. Every malformed line is reported with its line number (JobFileProblems), so a bad file is refused as
// a whole, at `tessera submit` before it is uploaded and again at the coordinator.

import TesseraCore

enum ToyLMPairsFile {
    static let keys = ["context", "chosen", "rejected"]

    /// The pairs of `bytes`, in file order; at most `maxPairs`.
    static func parse(_ bytes: [UInt8], file: JobFile, problem: ToyLMSpec, maxPairs: Int) throws -> [ToyLMPreferencePair] {
        var problems = JobFileProblems(file)
        var pairs: [ToyLMPreferencePair] = []
        var lineNumber = 0
        var start = 0
        let M = problem.contexts, V = problem.vocabulary, L = problem.length
        func response(_ v: JSONValue?, _ key: String, line: Int) -> Int? {
            guard let tokens = v?.arrayValue else {
                problems.add(line: line, "'\(key)' must be a list of \(L) token ids (0 to \(V - 1))")
                return nil
            }
            guard tokens.count == L else {
                problems.add(line: line, "'\(key)' has \(tokens.count) tokens; the problem's responses have length \(L)")
                return nil
            }
            var y = 0
            for (t, tok) in tokens.enumerated() {
                guard let id = tok.intValue, (0..<V).contains(id), tok.doubleValue == Double(id) else {
                    problems.add(line: line, "'\(key)'[\(t)] is \(tok.render()); a token id is an integer from 0 to \(V - 1) (vocab \(V))")
                    return nil
                }
                y = y * V + id
            }
            return y
        }
        while start < bytes.count {
            var end = start
            while end < bytes.count && bytes[end] != UInt8(ascii: "\n") { end += 1 }
            lineNumber += 1
            var line = bytes[start..<end]
            start = end + 1
            if line.last == UInt8(ascii: "\r") { line = line.dropLast() }
            if line.allSatisfy({ $0 == 32 || $0 == 9 }) { continue }
            let value: JSONValue
            do {
                value = try JSONValue.parse(Array(line))
            } catch {
                problems.add(line: lineNumber, "not a JSON object: \(error)")
                continue
            }
            guard let o = value.objectValue else {
                problems.add(line: lineNumber, "each line must be a JSON object {\"context\": …, \"chosen\": […], \"rejected\": […]}")
                continue
            }
            if let unknown = o.keys.first(where: { !keys.contains($0) }) {
                problems.add(line: lineNumber, "unknown key '\(unknown)'; a pair has \(keys.joined(separator: ", "))")
                continue
            }
            guard let x = o["context"]?.intValue, (0..<M).contains(x), o["context"]?.doubleValue == Double(x) else {
                problems.add(line: lineNumber, "'context' must be a context index from 0 to \(M - 1) (the problem has \(M) contexts)")
                continue
            }
            let chosen = response(o["chosen"], "chosen", line: lineNumber)
            let rejected = response(o["rejected"], "rejected", line: lineNumber)
            guard let chosen, let rejected else { continue }
            guard chosen != rejected else {
                problems.add(line: lineNumber, "'chosen' and 'rejected' are the same response; a pair needs two different ones")
                continue
            }
            guard pairs.count < maxPairs else {
                problems.add(line: lineNumber, "more than \(maxPairs) pairs; a data file may hold at most \(maxPairs)")
                break
            }
            pairs.append(ToyLMPreferencePair(context: x, chosen: chosen, rejected: rejected))
        }
        try problems.check()
        guard !pairs.isEmpty else {
            throw SpecError(file: file.path, line: nil, path: "files.\(file.name)", message: "the file has no pairs (one JSON object per line)")
        }
        return pairs
    }
}
