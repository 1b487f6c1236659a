-- Placeholder on the pgusage branch only: the memories' migration (002) is the pgmem branch's.
-- When both are merged, that branch's file replaces this one.
SELECT 1;
