# The two curl commands of the massive-ingestion guide, verbatim. The test
# sets API_URL to a local coordinator and the environment they read.
# Requires: export DEEPLAKE_API_KEY="..." (see quickstart)
# Requires: export DEEPLAKE_ORG_ID="your-org-id"
API_URL="https://api.deeplake.ai"
TABLE="massive_video_lake"
# 1. Create the table
curl -s -X POST "$API_URL/workspaces/$DEEPLAKE_WORKSPACE/tables/query" \
-H "Content-Type: application/json" \
-H "Authorization: Bearer $DEEPLAKE_API_KEY" \
-H "X-Activeloop-Org-Id: $DEEPLAKE_ORG_ID" \
-d '{
"query": "CREATE TABLE IF NOT EXISTS \"'$DEEPLAKE_WORKSPACE'\".\"'$TABLE'\" (id BIGSERIAL PRIMARY KEY, filename TEXT, metadata JSONB) USING deeplake"
}'
# 2. Batch insert metadata via the SQL endpoint to reduce round-trip latency.
# A single HTTP request can insert many rows at once using params_batch.
curl -s -X POST "$API_URL/workspaces/$DEEPLAKE_WORKSPACE/tables/query" \
-H "Content-Type: application/json" \
-H "Authorization: Bearer $DEEPLAKE_API_KEY" \
-H "X-Activeloop-Org-Id: $DEEPLAKE_ORG_ID" \
-d '{
"query": "INSERT INTO \"'$DEEPLAKE_WORKSPACE'\".\"'$TABLE'\" (filename, metadata) VALUES ($1, $2::jsonb), ($3, $4::jsonb), ($5, $6::jsonb)",
"params": ["video_001.mp4", "{\"duration\": 120, \"fps\": 30}", "video_002.mp4", "{\"duration\": 95, \"fps\": 60}", "video_003.mp4", "{\"duration\": 200, \"fps\": 30}"]
}'
