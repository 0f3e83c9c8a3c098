"""Collection: annotation sources joined per image id into ImageRecords."""
