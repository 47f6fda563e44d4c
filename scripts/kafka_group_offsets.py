#!/usr/bin/env python3
"""An independent view of a Kafka consumer group, through kafka-python (not
librdkafka): prints {"committed": {partition: offset}, "end": {partition: offset}}
as JSON for GROUP on TOPIC. Used by tests/kafka.rs to check that the group
offsets Weir commits are what any Kafka client sees.

usage: kafka_group_offsets.py BROKERS GROUP TOPIC
"""
import json
import sys

from kafka import KafkaConsumer, TopicPartition


def main() -> None:
    brokers, group, topic = sys.argv[1:4]
    # A consumer of the group that never subscribes (so never joins it): it
    # only fetches the group's committed offsets.
    consumer = KafkaConsumer(bootstrap_servers=brokers, group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
    committed = {}
    for tp in partitions:
        offset = consumer.committed(tp)
        if offset is not None and offset >= 0:
            committed[tp.partition] = offset
    end = {tp.partition: off for tp, off in consumer.end_offsets(partitions).items()}
    consumer.close()
    json.dump({"committed": committed, "end": end}, sys.stdout, sort_keys=True)


if __name__ == "__main__":
    main()
