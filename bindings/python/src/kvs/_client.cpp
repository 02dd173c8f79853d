// kvs._kvs.Client: writes through kvsd's socket (kvs_connect, kvs_put,
// kvs_erase, kvs_write_batch, kvs_client_wait). Each call releases the GIL
// while it waits for kvsd.
#include <string>
#include <vector>

#include "_kvs.hpp"

namespace kvs_py {
namespace {

struct ClientObject {
  PyObject_HEAD kvs_client* client;
};

kvs_client* client_of(PyObject* self) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  if (c->client == nullptr) PyErr_SetString(PyExc_ValueError, "the client is closed");
  return c->client;
}

PyObject* token(const kvs_token& t) { return Py_BuildValue("(iL)", t.partition, t.offset); }

bool write_options(PyObject* visible, PyObject* timeout, kvs_write_options* o) {
  const int v = PyObject_IsTrue(visible);
  if (v < 0) return false;
  o->visible = v;
  const int ms = timeout_ms(timeout);
  if (ms == -2) return false;
  o->timeout_ms = ms < 0 ? 0 : static_cast<uint32_t>(ms);
  return true;
}

// put(table, key, value, visible, timeout) -> (partition, offset)
PyObject* client_put(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_client* c = client_of(self);
  if (c == nullptr || !check_args("put", nargs, 5, 5)) return nullptr;
  const char* table = PyUnicode_AsUTF8(args[0]);
  Key key, value;
  kvs_write_options o{};
  if (table == nullptr || !key.from(args[1]) || !value.from(args[2]) ||
      !write_options(args[3], args[4], &o)) {
    return nullptr;
  }
  kvs_token t{};
  const int rc = without_gil(
      [&] { return kvs_put(c, table, key.data, key.len, value.data, value.len, &o, &t); });
  return rc == KVS_OK ? token(t) : raise(rc);
}

// delete(table, key, visible, timeout) -> (partition, offset)
PyObject* client_delete(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_client* c = client_of(self);
  if (c == nullptr || !check_args("delete", nargs, 4, 4)) return nullptr;
  const char* table = PyUnicode_AsUTF8(args[0]);
  Key key;
  kvs_write_options o{};
  if (table == nullptr || !key.from(args[1]) || !write_options(args[2], args[3], &o)) {
    return nullptr;
  }
  kvs_token t{};
  const int rc = without_gil([&] { return kvs_erase(c, table, key.data, key.len, &o, &t); });
  return rc == KVS_OK ? token(t) : raise(rc);
}

// batch(table, [(key, value or None)], visible, timeout) -> [(code, partition, offset)]
PyObject* client_batch(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_client* c = client_of(self);
  if (c == nullptr || !check_args("batch", nargs, 4, 4)) return nullptr;
  const char* table = PyUnicode_AsUTF8(args[0]);
  kvs_write_options o{};
  if (table == nullptr || !write_options(args[2], args[3], &o)) return nullptr;
  PyObject* seq = PySequence_Fast(args[1], "batch: a sequence of (key, value or None)");
  if (seq == nullptr) return nullptr;
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  std::vector<Key> keys(static_cast<size_t>(n)), values(static_cast<size_t>(n));
  std::vector<kvs_write_op> ops(static_cast<size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* item = PySequence_Fast_GET_ITEM(seq, i);
    PyObject *k = nullptr, *v = nullptr;
    auto& op = ops[static_cast<size_t>(i)];
    if (!PyArg_ParseTuple(item, "OO", &k, &v) || !keys[static_cast<size_t>(i)].from(k) ||
        (v != Py_None && !values[static_cast<size_t>(i)].from(v))) {
      Py_DECREF(seq);
      return nullptr;
    }
    op.key = keys[static_cast<size_t>(i)].data;
    op.key_len = keys[static_cast<size_t>(i)].len;
    op.value = v == Py_None ? nullptr : values[static_cast<size_t>(i)].data;
    op.value_len = v == Py_None ? 0 : values[static_cast<size_t>(i)].len;
  }
  std::vector<int> codes(static_cast<size_t>(n));
  std::vector<kvs_token> toks(static_cast<size_t>(n));
  const int rc = without_gil([&] {
    return kvs_write_batch(c, table, ops.data(), ops.size(), &o, codes.data(), toks.data());
  });
  Py_DECREF(seq);
  if (rc != KVS_OK) return raise(rc);
  PyObject* out = PyList_New(n);
  for (Py_ssize_t i = 0; out != nullptr && i < n; ++i) {
    const auto& t = toks[static_cast<size_t>(i)];
    PyList_SET_ITEM(out, i,
                    Py_BuildValue("(iiL)", codes[static_cast<size_t>(i)], t.partition, t.offset));
  }
  return out;
}

// wait(table, partition, offset, timeout): the table on kvsd's host applied it.
PyObject* client_wait(PyObject* self, PyObject* const* args, Py_ssize_t nargs) {
  kvs_client* c = client_of(self);
  if (c == nullptr || !check_args("wait", nargs, 4, 4)) return nullptr;
  const char* table = PyUnicode_AsUTF8(args[0]);
  kvs_token t{static_cast<int32_t>(PyLong_AsLong(args[1])), PyLong_AsLongLong(args[2])};
  const int ms = timeout_ms(args[3]);
  if (table == nullptr || PyErr_Occurred() || ms == -2) return nullptr;
  const int rc = without_gil([&] { return kvs_client_wait(c, table, &t, ms); });
  if (rc != KVS_OK) return raise(rc);
  Py_RETURN_NONE;
}

PyObject* client_close(PyObject* self, PyObject*) {
  auto* c = reinterpret_cast<ClientObject*>(self);
  kvs_disconnect(c->client);
  c->client = nullptr;
  Py_RETURN_NONE;
}

void client_dealloc(PyObject* self) {
  kvs_disconnect(reinterpret_cast<ClientObject*>(self)->client);
  PyTypeObject* type = Py_TYPE(self);
  type->tp_free(self);
  Py_DECREF(type);
}

PyMethodDef client_methods[] = {{"_put", fastcall(client_put), METH_FASTCALL, nullptr},
                                {"_delete", fastcall(client_delete), METH_FASTCALL, nullptr},
                                {"_batch", fastcall(client_batch), METH_FASTCALL, nullptr},
                                {"_wait", fastcall(client_wait), METH_FASTCALL, nullptr},
                                {"close", client_close, METH_NOARGS, "close(): disconnects"},
                                {nullptr, nullptr, 0, nullptr}};

PyType_Slot client_slots[] = {{Py_tp_dealloc, reinterpret_cast<void*>(client_dealloc)},
                              {Py_tp_methods, client_methods},
                              {0, nullptr}};

}  // namespace

PyType_Spec client_spec = {"kvs._kvs.Client", sizeof(ClientObject), 0,
                           Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE, client_slots};

PyObject* connect_client(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (!check_args("connect", nargs, 1, 1)) return nullptr;
  std::string socket;
  if (args[0] != Py_None) {
    const char* s = PyUnicode_AsUTF8(args[0]);
    if (s == nullptr) return nullptr;
    socket = s;
  }
  kvs_client* c = nullptr;
  const int rc =
      without_gil([&] { return kvs_connect(socket.empty() ? nullptr : socket.c_str(), &c); });
  if (rc != KVS_OK) return raise(rc);
  auto* obj = PyObject_New(ClientObject, state().client_type);
  if (obj == nullptr) {
    kvs_disconnect(c);
    return nullptr;
  }
  obj->client = c;
  return reinterpret_cast<PyObject*>(obj);
}

}  // namespace kvs_py
