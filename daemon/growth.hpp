// A table's size over its life: growing online when a record finds no room
// (a copy of the live entries into a segment twice as large, while records
// go on being applied, then a swap under the table's name), the hard limit
// max_memory_bytes, and the sizes a table is resized to at a restart and a
// rebuild starts with. The README ("Tables grow online") states the rules.
// Runs on kvsd's apply thread, like the replica it changes.
#pragma once

#include <cstdint>
#include <optional>

#include "config/config.hpp"
#include "kafka/consumer.hpp"
#include "replica.hpp"
#include "writer/table_writer.hpp"

namespace kvs::daemon {

// The size a table of `st` grows to when a record of `need` block bytes
// finds no room: the dimension that is short (the index when it holds its
// capacity, else the arena) doubles, or grows as far as `max_bytes` allows
// (0: no limit) by at least an eighth; the other doubles with it if it is
// over half used (and the limit allows); the arena always takes the live
// entries and the record. `expected`: what the table will hold once it has
// caught up (a bootstrap's projection), which both dimensions grow to at
// once if the limit allows. `partition_capacity` and `log_entries` are
// the new segment's (they count towards max_bytes). nullopt: the limit (or the layout's bounds)
// leaves no larger segment.
std::optional<TableSize> plan_growth(const WriterStats& st, uint64_t need, uint64_t max_bytes,
                                     uint32_t partition_capacity, uint64_t log_entries,
                                     std::optional<TableSize> expected = std::nullopt);

// While a table bootstraps (or is rebuilt): the entries and arena bytes it
// will hold once it has caught up, projected from what the records applied
// so far made of it (size and bytes times all records / records applied),
// with a tenth to spare; nullopt once current, or before any record.
std::optional<TableSize> bootstrap_projection(const WriterStats& st, uint64_t applied,
                                              uint64_t remaining);

// The size a segment should have at a restart, once its live entries are
// known: at least the configured initial size, and no more than four times
// what its entries need when it once held many more; nullopt: keep it.
std::optional<TableSize> plan_resize(const WriterStats& st, const config::TableConfig& cfg);

// The size a rebuild from the topic starts with: the configured initial
// size, or 1.5 times what the table holds now if more.
TableSize rebuild_size(const WriterStats& st, const config::TableConfig& cfg);

// bootstrap_projection for a table loaded from a snapshot of
// `seed_entries` entries taking `seed_live_bytes`, that has applied
// `applied` records since: what those records add is projected, not what
// was loaded.
std::optional<TableSize> seeded_projection(WriterStats st, uint64_t seed_entries,
                                           uint64_t seed_live_bytes, uint64_t applied,
                                           uint64_t remaining);

// The size a table loaded from a snapshot of `entries` entries taking
// `live_bytes` of arena starts with: as a rebuild's (1.5 times that, at
// least the configured size), or as little as the entries need, down to
// exactly that, where max_memory_bytes allows no more; nullopt if even
// that is over max_memory_bytes.
std::optional<TableSize> seed_size(uint64_t entries, uint64_t live_bytes,
                                   const config::TableConfig& cfg);

// The table's active segment found no room for a record of `need` block
// bytes: makes a larger one the active segment (its entries are copied in
// the background; see continue_growth). Errors: kTableFull (max_memory_bytes
// leaves no larger segment: t.at_limit is set), kNoMemory (/dev/shm), and
// the writer's.
Result<void> grow(Replica& t, uint64_t need);

// Copies more of a growth under way (a couple of milliseconds' worth) and,
// once it is complete, gives the new segment the table's name (readers
// move to it). False if kvsd cannot go on.
bool continue_growth(Replica& t, kafka::Consumer& c);

// Once per start, when the segment's live entries are known: resizes a
// segment smaller than the configured initial size, or much larger than
// its entries need.
void resize_if_due(Replica& t);

}  // namespace kvs::daemon
