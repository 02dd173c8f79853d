// kvs._kvs.Watch: kvs_watch_open .. kvs_watch_next .. kvs_watch_close.
// next() releases the GIL while it waits on the table's futex word; a
// watch is used by one thread at a time (another call meanwhile raises).
#include "_kvs.hpp"

namespace kvs_py {
namespace {

struct WatchObject {
  PyObject_HEAD PyObject* owner;  // the Table: it must outlive the watch
  kvs_watch* watch;
  bool busy;  // a next() runs without the GIL
};

// next(timeout) -> (kind, key, partition, offset, timestamp_ms, position) | None
PyObject* watch_next(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  auto* w = reinterpret_cast<WatchObject*>(self);
  if (!check_args("next", nargs, 1, 1)) return nullptr;
  if (w->watch == nullptr) {
    PyErr_SetString(PyExc_ValueError, "the watch is closed");
    return nullptr;
  }
  if (w->busy) {
    PyErr_SetString(PyExc_RuntimeError, "the watch is used by another thread");
    return nullptr;
  }
  const int ms = timeout_ms(args[0]);
  if (ms == -2) return nullptr;
  kvs_change c{};
  w->busy = true;
  const int rc = without_gil([&] { return kvs_watch_next(w->watch, &c, ms); });
  w->busy = false;
  if (rc == KVS_ETIMEDOUT) Py_RETURN_NONE;
  if (rc != KVS_OK) return raise(rc);
  return Py_BuildValue("(iy#ILLK)", c.kind, static_cast<const char*>(c.key),
                       static_cast<Py_ssize_t>(c.key_len), c.partition,
                       static_cast<long long>(c.offset), static_cast<long long>(c.timestamp_ms),
                       static_cast<unsigned long long>(c.position));
}

PyObject* watch_close(PyObject* self, PyObject*) {
  auto* w = reinterpret_cast<WatchObject*>(self);
  if (w->busy) {
    PyErr_SetString(PyExc_RuntimeError, "the watch is used by another thread");
    return nullptr;
  }
  kvs_watch_close(w->watch);
  w->watch = nullptr;
  Py_RETURN_NONE;
}

void watch_dealloc(PyObject* self) {
  auto* w = reinterpret_cast<WatchObject*>(self);
  kvs_watch_close(w->watch);
  Py_XDECREF(w->owner);
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef watch_methods[] = {
    {"next", fastcall(watch_next), METH_FASTCALL, "next(timeout) -> change tuple | None"},
    {"close", watch_close, METH_NOARGS, "close()"},
    {nullptr, nullptr, 0, nullptr}};

PyType_Slot watch_slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(watch_dealloc)},
                             {Py_tp_methods, watch_methods},
                             {0, nullptr}};

}  // namespace

PyType_Spec watch_spec = {"kvs._kvs.Watch", sizeof(WatchObject), 0, Py_TPFLAGS_DEFAULT,
                          watch_slots};

// table._watch(filter, key) -> Watch
PyObject* open_watch(PyObject* table, PyObject* const* args, Py_ssize_t nargs) {
  auto* t = reinterpret_cast<TableObject*>(table);
  if (!check_args("watch", nargs, 2, 2)) return nullptr;
  if (t->table == nullptr) {
    PyErr_SetString(PyExc_ValueError, "the table is closed");
    return nullptr;
  }
  const int filter = static_cast<int>(PyLong_AsLong(args[0]));
  Key key;
  if (PyErr_Occurred() || !key.from(args[1])) return nullptr;
  kvs_watch* w = nullptr;
  if (const int rc = kvs_watch_open(t->table, filter, key.data, key.len, &w); rc != KVS_OK) {
    return raise(rc);
  }
  auto* obj = PyObject_New(WatchObject, state().watch_type);
  if (obj == nullptr) {
    kvs_watch_close(w);
    return nullptr;
  }
  Py_INCREF(table);
  obj->owner = table;
  obj->watch = w;
  obj->busy = false;
  return reinterpret_cast<PyObject*>(obj);
}

}  // namespace kvs_py
