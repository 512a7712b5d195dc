// Streaming merges (WORKLOADS.md §4): the tree stack reproduces the recursive fixed-tree reduction for any shard
// layout; the sampling reducer fed shard outputs in order gives the same bits for any shard count, holds a bounded
// state, and shard results are as small as their statistics need.

import TesseraCompute
import TesseraCore
@testable import TesseraWorkloads
import Testing

@Suite("Sampling: streaming merge")
struct SamplingStreamingMergeTests {
    /// The v1 merge's reduction, kept here as the definition of the tree: split at count / 2, recurse, combine.
    private func recursive<T>(_ items: ArraySlice<T>, _ combine: (T, T) -> T) -> T {
        if items.count == 1 { return items[items.startIndex] }
        let mid = items.startIndex + items.count / 2
        return combine(
            recursive(items[items.startIndex..<mid], combine), recursive(items[mid..<items.endIndex], combine))
    }

    @Test("shard-local stacks fed into a job stack give the recursive tree, for every block count and layout")
    func stackMatchesRecursiveTree() {
        let combine: (String, String) -> String = { "(\($0),\($1))" }
        for blocks in 1...70 {
            let tree = SamplingReductionTree(blockCount: blocks)
            let reference = recursive((0..<blocks).map(String.init)[...], combine)
            for shards in Set([1, 2, 3, 5, 7, blocks]) where shards <= blocks {
                let ranges = SamplingPlan.ranges(samples: blocks * SamplingPlan.blockSize, shards: shards)
                var job = SamplingTreeStack<String>(tree: tree)
                for range in ranges {
                    var shard = SamplingTreeStack<String>(tree: tree, start: range.lowerBound / SamplingPlan.blockSize)
                    for b in (range.lowerBound / SamplingPlan.blockSize)..<(range.upperBound / SamplingPlan.blockSize) {
                        shard.push(b..<(b + 1), String(b), combine: combine)
                    }
                    #expect(shard.pending.count <= tree.maximumPending)
                    for node in shard.pending { job.push(node.blocks, node.value, combine: combine) }
                    #expect(job.pending.count <= tree.maximumPending)
                }
                #expect(job.root == reference, "blocks \(blocks), shards \(shards)")
            }
        }
    }

    @Test("the stack holds at most one node per tree level, however many blocks pass")
    func stackDepthIsLogarithmic() {
        for blocks in [1, 2, 3, 1000, 100_000] {
            let tree = SamplingReductionTree(blockCount: blocks)
            var depth = 1
            while (1 << (depth - 1)) < blocks { depth += 1 }
            #expect(tree.maximumPending <= depth)
            var stack = SamplingTreeStack<Int>(tree: tree)
            var most = 0
            for b in 0..<blocks {
                stack.push(b..<(b + 1), 1, combine: +)
                most = max(most, stack.pending.count)
            }
            #expect(stack.root == blocks)
            #expect(most <= tree.maximumPending)
        }
    }

    private func spec(shards: Int, samples: Int) throws -> JobSpec {
        try JobSpec.parse(
            """
            name: stream
            kind: sampling
            algorithm: ddim
            seed: 11
            shards: \(shards)
            params:
              target: {type: gmm, means: [[2,0],[0,2],[-2,0],[0,-2]], stds: [0.2,0.2,0.2,0.2]}
              sampling_steps: 3
              samples: \(samples)
            """, file: "stream.yaml")
    }

    /// Runs every shard of `spec` and returns their outputs in shard order.
    private func outputs(_ spec: JobSpec) throws -> [ShardOutput] {
        let (algorithm, slices) = try Workloads.catalogue.validate(spec)
        return try slices.enumerated().map { i, s in
            try algorithm.run(
                ShardTask(spec: spec, shardIndex: i, attempt: 1, slice: s.slice, totalSteps: s.totalSteps, resume: nil),
                sink: RecordingSink(stopAfter: nil))
        }
    }

    @Test("the reducer fed outputs in shard order: same bits for 1, 4 and 11 shards, bounded state, small results")
    func reducerInvarianceAndBounds() throws {
        let samples = 10 * 4096 + 123  // 11 blocks, the last one short
        let tree = SamplingReductionTree(samples: samples)
        var reference: String?
        var largestState: [Int: Int] = [:]
        for shards in [1, 4, 11] {
            let spec = try spec(shards: shards, samples: samples)
            let algorithm = try Workloads.catalogue.resolve(spec)
            let parts = try outputs(spec)
            #expect(parts.count == shards)
            // Through the Algorithm API, as the coordinator does.
            var reducer = try algorithm.makeReducer(spec)
            for part in parts { try reducer.add(part) }
            let text = try reducer.finish().render()
            if let reference { #expect(text == reference, "\(shards) shards") } else { reference = text }

            // The statistics reducer's state is bounded by the tree, not by the shards.
            let config = try DiffusionSampling(.ddim).config(spec)
            var statistics = SamplingStatisticsReducer(setup: config.statistics)
            var most = 0
            for part in parts {
                let shard = try SamplingShardResult.deserialize(try #require(part.result))
                try statistics.add(shard)
                most = max(most, statistics.retainedValues)
            }
            let node = SamplingTreeNode(
                blocks: 0..<1, total: 0, moments: .empty(dimension: 2), rffSum: [Double](repeating: 0, count: 512),
                modes: [SampleMoments](repeating: .empty(dimension: 2), count: 4))
            let histogram = SamplingProbeSetup.projections * SamplingProbeSetup.bins
            #expect(most <= 2 * (histogram + 1 + tree.maximumPending * node.valueCount))
            largestState[shards] = most

            // Each shard's result: per population at most 2 log2(blocks) + 2 nodes, and a histogram whose element
            // width holds the shard's sample count (no bin can count more).
            for (i, part) in parts.enumerated() {
                let bytes = try #require(part.result)
                let shard = try SamplingShardResult.deserialize(bytes)
                let n = shard.range.count
                let width = n <= 255 ? 1 : n <= 65535 ? 2 : 4
                let maxNodes = 2 * tree.maximumPending
                #expect(shard.sampled.nodes.count <= maxNodes && shard.exact.nodes.count <= maxNodes)
                let bound = 2 * (histogram * width + maxNodes * node.valueCount * 8 + 16) + 4096
                #expect(bytes.count <= bound, "shard \(i): \(bytes.count) bytes > \(bound)")
                let file = try SafeTensorsFile.parse(bytes)
                let hist = try #require(file["sampled.histogram"])
                let largest = try hist.countValues().max()!
                let narrowest: SafeTensorDType = largest <= 255 ? .U8 : largest <= 65535 ? .U16 : .U32
                #expect(hist.dtype == narrowest)
            }
        }
        // One shard per block holds no more than one shard for the whole job.
        #expect(largestState[11]! <= largestState[1]! + 2 * SamplingProbeSetup.projections * SamplingProbeSetup.bins)
    }

    @Test("the reducer rejects a shard fed out of order and a missing last shard")
    func reducerRejectsOrder() throws {
        let spec = try spec(shards: 3, samples: 3 * 4096)
        let algorithm = try Workloads.catalogue.resolve(spec)
        let parts = try outputs(spec)
        var swapped = try algorithm.makeReducer(spec)
        try swapped.add(parts[0])
        #expect(throws: SamplingError.self) { try swapped.add(parts[2]) }
        var short = try algorithm.makeReducer(spec)
        try short.add(parts[0])
        try short.add(parts[1])
        #expect(throws: SamplingError.self) { _ = try short.finish() }
    }
}
