#pragma once
// A one-shot HTTP server for tests: answers one connection on 127.0.0.1 with canned bytes.

#include <boost/asio/as_tuple.hpp>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/read_until.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/asio/write.hpp>

#include <string>

namespace sentinel::test {

/// What the server does after its answer: close its side, or say nothing more (a stalled peer).
enum class Then { close, stall };

/// Answers the first connection to `acceptor` with `response` once the request head has
/// arrived, keeps that head in `request`, then closes its side (or, with `Then::stall`, says
/// nothing more) and waits until the client has closed.
inline boost::asio::awaitable<void> answer_once(boost::asio::ip::tcp::acceptor& acceptor, std::string response,
                                                std::string& request, Then then = Then::close) {
  namespace asio = boost::asio;
  constexpr auto no_throw = asio::as_tuple(asio::use_awaitable);
  auto accept = acceptor.async_accept(no_throw);
  auto [accept_ec, socket] = co_await std::move(accept);
  if (accept_ec) co_return;
  auto read = asio::async_read_until(socket, asio::dynamic_buffer(request), "\r\n\r\n", no_throw);
  auto [read_ec, head] = co_await std::move(read);
  if (read_ec) co_return;
  auto write = asio::async_write(socket, asio::buffer(response), no_throw);
  co_await std::move(write);  // the client may hang up early on purpose (body limit)
  boost::system::error_code ignored;
  if (then == Then::close) socket.shutdown(asio::ip::tcp::socket::shutdown_send, ignored);
  char byte = 0;
  auto drain = socket.async_read_some(asio::buffer(&byte, 1), no_throw);
  co_await std::move(drain);
}

}  // namespace sentinel::test
