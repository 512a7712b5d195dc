import Testing
import TesseraCompute

/// Known-answer vectors from Random123's kat_vectors (philox4x32_10), as quoted in WORKLOADS.md §0.
@Suite struct PhiloxTests {
    @Test func allZeros() {
        let r = Philox4x32.block(counter: (0, 0, 0, 0), key: (0, 0))
        #expect([r.0, r.1, r.2, r.3] == [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8])
    }

    @Test func allOnes() {
        let m = UInt32.max
        let r = Philox4x32.block(counter: (m, m, m, m), key: (m, m))
        #expect([r.0, r.1, r.2, r.3] == [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd])
    }

    @Test func piDigits() {
        let r = Philox4x32.block(
            counter: (0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344),
            key: (0xa409_3822, 0x299f_31d0)
        )
        #expect([r.0, r.1, r.2, r.3] == [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1])
    }

    @Test func counterLayout() {
        // words(seed, index, step, stream) puts seed in the key and (index_lo, index_hi, step, stream) in the counter.
        let seed: UInt64 = 0x299f_31d0_a409_3822
        let index: UInt64 = 0x85a3_08d3_243f_6a88
        let r = Philox4x32.words(seed: seed, index: index, step: 0x1319_8a2e, stream: 0x0370_7344)
        #expect([r.0, r.1, r.2, r.3] == [0xd16c_fe09, 0x94fd_cceb, 0x5001_e420, 0x2412_6ea1])
    }

    @Test func uniformIsOpenInterval() {
        #expect(Philox4x32.uniform(0) > 0)
        #expect(Philox4x32.uniform(.max) < 1)
        #expect(Philox4x32.uniform(0) == 0.5 * 0x1p-24)
    }

    @Test func streamGroupsUseIndexHi() {
        var s = PhiloxStream(seed: 7, index: 3, step: 2, stream: 1)
        let first = (0..<8).map { _ in s.nextWord() }
        let g0 = Philox4x32.words(seed: 7, index: 3, step: 2, stream: 1)
        let g1 = Philox4x32.words(seed: 7, index: 3 | (1 << 32), step: 2, stream: 1)
        #expect(first == [g0.0, g0.1, g0.2, g0.3, g1.0, g1.1, g1.2, g1.3])
    }

    @Test func normalsHaveUnitMoments() {
        var sum = 0.0, sumSq = 0.0
        let n = 200_000
        for i in 0..<(n / 2) {
            var s = PhiloxStream(seed: 11, index: UInt32(i), step: 0, stream: .initialNoise)
            for z in s.normals(2) { sum += z; sumSq += z * z }
        }
        let mean = sum / Double(n), variance = sumSq / Double(n) - mean * mean
        // 5-sigma bounds: sd(mean) = 1/sqrt(n), sd(var) = sqrt(2/n).
        #expect(abs(mean) < 5 / Double(n).squareRoot())
        #expect(abs(variance - 1) < 5 * (2 / Double(n)).squareRoot())
    }
}
