CREATE TABLE cacheme_data (
	id INTEGER NOT NULL AUTO_INCREMENT,
	`key` VARCHAR(512) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin,
	value BLOB,
	expire DATETIME(6),
	updated_at DATETIME(6) DEFAULT now(6),
	PRIMARY KEY (id),
	UNIQUE (`key`)
);
CREATE INDEX ix_cacheme_data_expire ON cacheme_data (expire);
