-- wrk script for benches/soak.sh: every request carries the next token of a file
-- (one compact JWS a line), round robin, so N requests use min(N, tokens) distinct ones.
-- Arguments: TOKEN_FILE [OFFSET] (OFFSET: requests already sent by earlier rounds, so
-- each round carries on where the last one stopped).
local tokens = {}
local count = 0
local next_index = 0

function init(args)
  for line in io.lines(args[1]) do
    count = count + 1
    tokens[count] = "Bearer " .. line
  end
  next_index = tonumber(args[2] or "0") or 0
end

function request()
  next_index = next_index + 1
  return wrk.format("GET", nil, { ["Authorization"] = tokens[(next_index % count) + 1] })
end
