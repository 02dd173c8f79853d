// The list of open tables, and what fork() does to them.
//
// fork(): the child must not announce in its parent's files (the parent
// clears them, and the parent's lock says nothing of the child's life).
// pthread_atfork handlers hold every lock across the fork, and in the child
// drop the parent's files and this thread's guards: the child claims files
// of its own at its next read. Views of a guard open across fork() are not
// valid in the child.
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <memory>
#include <mutex>
#include <vector>

#include "src/reader/state.hpp"

namespace kvs::reader {

namespace {

// Every open table. Lock order: g_tables_mu, then a table's mu, then its
// generations' pool mu.
std::mutex g_tables_mu;
std::vector<kvs_table*> g_tables;

void before_fork() {
  g_tables_mu.lock();
  for (kvs_table* t : g_tables) {
    t->mu.lock();
    for (auto& g : t->gens) g->pool->mu.lock();
  }
}

void after_fork_in_parent() {
  for (kvs_table* t : g_tables) {
    for (auto& g : t->gens) g->pool->mu.unlock();
    t->mu.unlock();
  }
  g_tables_mu.unlock();
}

// In the child, on the thread that forked (the only one): the parent's files
// are the parent's; this thread's guards end (their views are not valid).
void after_fork_in_child() {
  for (kvs_table* t : g_tables) {
    for (auto& g : t->gens) {
      SlotPool& old = *g->pool;
      for (auto& f : old.files) f->abandon();
      old.files.clear();
      old.free.clear();
      old.closed = true;
      old.mu.unlock();
      g->pool = std::make_shared<SlotPool>();
      g->sleepers.store(0, std::memory_order_relaxed);  // the parent's threads
    }
    t->mu.unlock();
  }
  forget_thread_guards();
  g_tables_mu.unlock();
}

}  // namespace

void install_fork_handlers() {
  static std::once_flag fork_handlers;
  std::call_once(fork_handlers,
                 [] { ::pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child); });
}

void track_table(kvs_table* t) {
  std::lock_guard lock(g_tables_mu);
  g_tables.push_back(t);
}

void untrack_table(kvs_table* t) {
  std::lock_guard lock(g_tables_mu);
  std::erase(g_tables, t);
}

}  // namespace kvs::reader
