// kvs._kvs: CPython's C API over libkvs's C ABI (kvs/kvs.h), for the read
// path: Table and ReadGuard. A get is one METH_FASTCALL call into
// kvs_get_copy's path, without ctypes' marshalling. The write client is
// _client.cpp; the module, its errors and shared helpers are _module.cpp.
//
// A ReadGuard's memoryviews point into shared memory: the guard keeps each
// one and releases it when it ends, so that a view used after the guard
// raises ValueError instead of reading memory kvsd may reuse. A view that
// something else still exports (numpy.frombuffer of it, say) cannot be
// released: the guard then stays open (memory stays pinned, never unsafe)
// and end() raises BufferError until that export is gone.
#include <string>
#include <vector>

#include "_kvs.hpp"

namespace kvs_py {
namespace {

kvs_table* table_of(PyObject* self) {
  auto* t = reinterpret_cast<TableObject*>(self);
  if (t->table == nullptr) PyErr_SetString(PyExc_ValueError, "the table is closed");
  return t->table;
}

// --- Table ------------------------------------------------------------------

void table_dealloc(PyObject* self) {
  auto* t = reinterpret_cast<TableObject*>(self);
  kvs_close(t->table);
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyObject* table_get(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_table* t = table_of(self);
  if (t == nullptr || !check_args("get", nargs, 1, 2)) return nullptr;
  Key key;
  if (!key.from(args[0])) return nullptr;
  char small[512];
  size_t len = 0;
  int rc = kvs_get_copy(t, key.data, key.len, small, sizeof small, &len);
  if (rc == KVS_OK) return PyBytes_FromStringAndSize(small, static_cast<Py_ssize_t>(len));
  if (rc == KVS_ENOTFOUND) {
    PyObject* d = nargs > 1 ? args[1] : Py_None;
    Py_INCREF(d);
    return d;
  }
  // Larger than the stack buffer: copied into the bytes object itself. It
  // may change size in between (kvsd wrote it again): retried.
  while (rc == KVS_ERANGE) {
    PyObject* out = PyBytes_FromStringAndSize(nullptr, static_cast<Py_ssize_t>(len));
    if (out == nullptr) return nullptr;
    size_t got = 0;
    rc = kvs_get_copy(t, key.data, key.len, PyBytes_AS_STRING(out), len, &got);
    if (rc == KVS_OK && got == len) return out;
    Py_DECREF(out);
    if (rc == KVS_OK) rc = KVS_ERANGE;
    len = got;
  }
  if (rc == KVS_ENOTFOUND) Py_RETURN_NONE;
  return raise(rc);
}

PyObject* table_read(PyObject* self, PyObject*) {
  kvs_table* t = table_of(self);
  if (t == nullptr) return nullptr;
  kvs_txn* txn = nullptr;
  if (const int rc = kvs_read_begin(t, &txn); rc != KVS_OK) return raise(rc);
  auto* g = PyObject_New(GuardObject, state().guard_type);
  if (g == nullptr) {
    kvs_read_end(txn);
    return nullptr;
  }
  Py_INCREF(self);
  g->owner = self;
  g->txn = txn;
  g->thread = pthread_self();
  g->exports = 0;
  g->views = PyList_New(0);
  if (g->views == nullptr) {
    Py_DECREF(g);
    return nullptr;
  }
  return reinterpret_cast<PyObject*>(g);
}

PyObject* table_len(PyObject* self) {
  kvs_table* t = table_of(self);
  return t == nullptr ? nullptr : PyLong_FromUnsignedLongLong(kvs_size(t));
}

Py_ssize_t table_length(PyObject* self) {
  kvs_table* t = table_of(self);
  return t == nullptr ? -1 : static_cast<Py_ssize_t>(kvs_size(t));
}

PyObject* table_close(PyObject* self, PyObject*) {
  auto* t = reinterpret_cast<TableObject*>(self);
  kvs_close(t->table);
  t->table = nullptr;
  Py_RETURN_NONE;
}

PyObject* table_wait_ready(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_table* t = table_of(self);
  if (t == nullptr || !check_args("wait_ready", nargs, 1, 1)) return nullptr;
  const int ms = timeout_ms(args[0]);
  if (ms == -2) return nullptr;
  const int rc = without_gil([&] { return kvs_wait_ready(t, ms); });
  if (rc != KVS_OK) return raise(rc);
  Py_RETURN_NONE;
}

PyObject* table_wait(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_table* t = table_of(self);
  if (t == nullptr || !check_args("wait", nargs, 3, 3)) return nullptr;
  kvs_token tok{};
  tok.partition = static_cast<int32_t>(PyLong_AsLong(args[0]));
  tok.offset = PyLong_AsLongLong(args[1]);
  const int ms = timeout_ms(args[2]);
  if (PyErr_Occurred() || ms == -2) return nullptr;
  const int rc = without_gil([&] { return kvs_wait(t, &tok, ms); });
  if (rc != KVS_OK) return raise(rc);
  Py_RETURN_NONE;
}

PyObject* table_stats(PyObject* self, PyObject*) {
  kvs_table* t = table_of(self);
  if (t == nullptr) return nullptr;
  kvs_table_stats s{};
  if (const int rc = kvs_stat(t, &s); rc != KVS_OK) return raise(rc);
  return Py_BuildValue(
      "{sKsKsKsKsKsKsKsKsisIsIsIsKsKsIsIsKsKsi}", "entries", s.entries, "capacity", s.capacity,
      "arena_used_bytes", s.arena_used_bytes, "arena_bytes", s.arena_bytes, "segment_bytes",
      s.segment_bytes, "puts", s.puts, "erases", s.erases, "skipped", s.skipped, "writer_pid",
      s.writer_pid, "readers_reading", s.readers_reading, "held_partitions", s.held_partitions,
      "hold_reason", s.hold_reason, "backlog", s.backlog, "change_log_position",
      s.change_log_position, "waiters", s.waiters, "partitions", kvs_partition_count(t),
      "holder_bytes", s.holder_bytes, "wakes", s.wakes, "state", kvs_state(t));
}

PyMethodDef table_methods[] = {
    {"get", fastcall(table_get), METH_FASTCALL,
     "get(key, default=None) -> bytes: the value, copied (a guard of its own)"},
    {"read", table_read, METH_NOARGS, "read() -> ReadGuard"},
    {"close", table_close, METH_NOARGS, "close(): unmaps the table"},
    {"wait_ready", fastcall(table_wait_ready), METH_FASTCALL, "wait_ready(timeout)"},
    {"_wait", fastcall(table_wait), METH_FASTCALL, "_wait(partition, offset, timeout)"},
    {"_stats", table_stats, METH_NOARGS, "_stats() -> dict"},
    {"_watch", fastcall(open_watch), METH_FASTCALL, "_watch(filter, key) -> Watch"},
    {"size", fastcall(table_len), METH_NOARGS, "size() -> int"},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot table_slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(table_dealloc)},
                             {Py_tp_methods, table_methods},
                             {Py_mp_length, reinterpret_cast<void*>(table_length)},
                             {Py_tp_doc, const_cast<char*>("An open kvs table (kvs.Table)")},
                             {0, nullptr}};

}  // namespace

PyType_Spec table_spec = {"kvs._kvs.Table", sizeof(TableObject), 0, Py_TPFLAGS_DEFAULT,
                          table_slots};

PyObject* open_table(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args("open", nargs, 5, 5)) return nullptr;
  const char* name = PyUnicode_AsUTF8(args[0]);
  if (name == nullptr) return nullptr;
  std::string strs[3];
  const char* ptrs[3] = {nullptr, nullptr, nullptr};
  for (int i = 0; i < 3; ++i) {
    if (args[i + 1] == Py_None) continue;
    const char* s = PyUnicode_AsUTF8(args[i + 1]);
    if (s == nullptr) return nullptr;
    strs[i] = s;
    ptrs[i] = strs[i].c_str();
  }
  const int handover = static_cast<int>(PyLong_AsLong(args[4]));
  if (PyErr_Occurred()) return nullptr;
  kvs_open_options o{ptrs[0], ptrs[1], ptrs[2], handover};
  kvs_table* t = nullptr;
  const int rc = without_gil([&] { return kvs_open(name, &o, &t); });
  if (rc != KVS_OK) return raise(rc);
  auto* obj = PyObject_New(TableObject, state().table_type);
  if (obj == nullptr) {
    kvs_close(t);
    return nullptr;
  }
  obj->table = t;
  return reinterpret_cast<PyObject*>(obj);
}

}  // namespace kvs_py
