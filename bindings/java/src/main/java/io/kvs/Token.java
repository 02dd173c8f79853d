package io.kvs;

/** Where Kafka stored a write: any host's table can wait for it ({@link Table#await}). */
public record Token(int partition, long offset) {}
