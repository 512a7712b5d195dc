// libFuzzer target `safetensors` (ops/fuzz): the safetensors reader (SafeTensorsFile.parse: the 8-byte header
// length, the strict JSON header, offsets, dtypes and shapes) on arbitrary bytes, as a worker reads a checkpoint
// from the coordinator.
//
// Properties: parsing never crashes or traps; an accepted file serializes to bytes that parse back to an equal
// file, and serializing that gives the same bytes.

import TesseraCompute

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSafeTensors(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    guard let file = try? SafeTensorsFile.parse(bytes) else { return 0 }
    for t in file.tensors {
        switch t.dtype {
        case .F32: _ = try? t.float32Values()
        case .F64: _ = try? t.float64Values()
        case .I64: _ = try? t.int64Values()
        default: break
        }
    }
    let once = file.serialize()
    let back: SafeTensorsFile
    do {
        back = try SafeTensorsFile.parse(once)
    } catch {
        fatalError("an accepted file re-serializes to bytes the reader refuses: \(error)")
    }
    precondition(back == file, "an accepted file round-trips to a different file")
    precondition(back.serialize() == once, "serialize(parse(serialize(f))) differs from serialize(f)")
    return 0
}
