// A table's phase (replica.hpp) and every transition between phases: which
// segment records go to, and when a replacement takes the table's name.
//
//   kBootstrapping --become_ready--> kReady
//   kBootstrapping, kReady --enter_growth--> kGrowing
//        --publish_growth_segment or leave_growth--> back (kReady if READY)
//   any --drop_replacements, enter_rebuild--> kRebuilding
//   kBootstrapping (at start) --enter_seeded--> kSeeded
//   kRebuilding, kSeeded --publish_rebuild--> back, then become_ready
#include <cassert>
#include <utility>

#include "replica.hpp"

namespace kvs::daemon {

namespace {

// The phase of a table with no replacement under way.
Phase resting(const Replica& t) { return t.ready ? Phase::kReady : Phase::kBootstrapping; }

}  // namespace

TableWriter& Replica::active() {
  switch (phase) {
    case Phase::kGrowing:
      return *grow;
    case Phase::kRebuilding:
    case Phase::kSeeded:
      return *rebuild;
    case Phase::kBootstrapping:
    case Phase::kReady:
      break;
  }
  return *writer;
}

void drop_replacements(Replica& t) {
  t.grow.reset();
  t.rebuild.reset();
  t.phase = resting(t);
}

void enter_rebuild(Replica& t, std::unique_ptr<TableWriter> w) {
  assert(!t.grow && !t.rebuild);
  t.rebuild = std::move(w);
  t.seed = Replica::Seed{};
  t.phase = Phase::kRebuilding;
}

void enter_seeded(Replica& t, std::unique_ptr<TableWriter> w, Replica::Seed seed) {
  assert(!t.grow && !t.rebuild);
  t.rebuild = std::move(w);
  t.seed = std::move(seed);
  t.phase = Phase::kSeeded;
}

void replace_rebuild(Replica& t, std::unique_ptr<TableWriter> w) {
  assert(replacing(t.phase));
  t.rebuild = std::move(w);
}

void enter_growth(Replica& t, std::unique_ptr<TableWriter> w) {
  assert(t.phase == Phase::kBootstrapping || t.phase == Phase::kReady);
  t.grow = std::move(w);
  t.phase = Phase::kGrowing;
}

Result<void> publish_growth_segment(Replica& t) {
  assert(t.phase == Phase::kGrowing);
  if (auto ok = t.writer->publish_replacement(*t.grow); !ok) return ok;
  t.replaced.push_back(t.writer->header().incarnation);
  t.writer = std::move(t.grow);
  t.phase = resting(t);
  ++t.growths;
  return {};
}

void leave_growth(Replica& t) {
  assert(t.phase == Phase::kGrowing);
  t.grow.reset();
  t.phase = resting(t);
}

Result<void> publish_rebuild(Replica& t) {
  assert(replacing(t.phase));
  t.rebuild->set_state(format::TableState::kReady);
  if (auto ok = t.writer->publish_replacement(*t.rebuild); !ok) return ok;
  t.replaced.push_back(t.writer->header().incarnation);
  t.writer = std::move(t.rebuild);
  t.seed = Replica::Seed{};
  t.phase = resting(t);
  ++t.rebuilds;
  return {};
}

void become_ready(Replica& t) {
  assert(t.phase == Phase::kBootstrapping || t.phase == Phase::kReady);
  t.ready = true;
  t.phase = Phase::kReady;
  t.writer->set_state(format::TableState::kReady);
}

}  // namespace kvs::daemon
