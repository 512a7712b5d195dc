// libFuzzer target `jobspec` (ops/fuzz): the job-spec parser (JobSpec.parse: YAML through libyaml's event check
// and Yams, then validation) on arbitrary text. Input: the bytes as UTF-8 (invalid sequences replaced).
//
// Properties: parsing never crashes, traps or runs away (libFuzzer's -timeout and -rss_limit_mb catch an input
// that takes seconds or gigabytes, as an alias bomb did); every failure is a SpecError; and an accepted spec's
// stored form (canonical JSON) parses back to the same spec.

import TesseraCore

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJobSpec(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let text = size == 0 ? "" : String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    let spec: JobSpec
    do {
        spec = try JobSpec.parse(text, file: "fuzz.yaml")
    } catch is SpecError {
        return 0
    } catch {
        fatalError("JobSpec.parse threw something other than a SpecError: \(type(of: error)): \(error)")
    }
    let stored = spec.json.utf8Bytes
    do {
        let back = try JobSpec.fromStored(stored)
        precondition(back == spec, "the stored form of an accepted spec parses to a different spec")
    } catch {
        fatalError("the stored form of an accepted spec does not parse: \(error)\n\(String(decoding: stored, as: UTF8.self))")
    }
    return 0
}
