"""The Splittable DoFn reader against a real broker: exact offset ranges, batching, watermarks."""
import apache_beam as beam
from apache_beam.testing.util import assert_that, equal_to

from cx360.pipelines.job import local_options
from cx360.transforms.kafka_io import (PartitionRange, high_watermarks, list_partitions,
                                       unpack_records)
from cx360.transforms.kafka_source import ReadFromKafkaRanges
from kafka_helpers import produce


def test_high_watermarks_come_from_fetch_not_list_offsets(kafka, topics):
    topic = topics["social"]
    produce(kafka, topic, [(None, b"a%d" % i) for i in range(120)], partition=0)
    produce(kafka, topic, [(None, b"b%d" % i) for i in range(7)], partition=2)
    assert list_partitions(kafka, [topic]) == {topic: [0, 1, 2]}
    # Probing from the middle of a partition costs one small fetch and gives its end.
    assert high_watermarks(kafka, {(topic, 0): 100, (topic, 1): 0, (topic, 2): 0}) == {
        (topic, 0): 120, (topic, 1): 0, (topic, 2): 7}


def test_reads_exactly_the_requested_ranges_in_batches(kafka, topics):
    topic = topics["web"]
    produce(kafka, topic, [(b"k", b"p0-%d" % i) for i in range(300)], partition=0)
    produce(kafka, topic, [(b"k", b"p1-%d" % i) for i in range(40)], partition=1)
    ranges = [PartitionRange(topic, 0, 10, 250), PartitionRange(topic, 0, 290, 300),
              PartitionRange(topic, 1, 0, 40), PartitionRange(topic, 2, 0, 0)]
    expected = ([(0, i, b"p0-%d" % i) for i in range(10, 250)]
                + [(0, i, b"p0-%d" % i) for i in range(290, 300)]
                + [(1, i, b"p1-%d" % i) for i in range(40)])
    with beam.Pipeline(options=local_options()) as p:
        batches = (p | ReadFromKafkaRanges(kafka, ranges, batch_size=64)
                   | beam.Map(unpack_records))
        records = batches | beam.FlatMap(lambda batch: [(r.partition, r.offset, r.value)
                                                        for r in batch])
        sizes = batches | beam.Map(len)
        assert_that(records, equal_to(expected), label="ExactRecords")
        # 240 = 3x64 + 48, then 10, then 40: no batch is larger than asked for.
        assert_that(sizes, equal_to([64, 64, 64, 48, 10, 40]), label="BatchSizes")
